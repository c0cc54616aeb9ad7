//! The safetensors header validation lf-model's `MappedFile::open` relies on
//! (`SafeTensors::read_metadata`, the `safetensors` crate lf-model uses), then every tensor's bytes
//! looked up the way `MappedFile` does: never a panic, never an allocation beyond the header bound,
//! and every accepted tensor's bytes lie inside the buffer and match its shape and dtype.
//! lf-model itself links libtorch, which this fuzz build does not carry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safetensors::SafeTensors;

fuzz_target!(|data: &[u8]| {
    let Ok((header_len, metadata)) = SafeTensors::read_metadata(data) else {
        return;
    };
    let data_start = 8 + header_len;
    for (name, info) in metadata.tensors() {
        let (start, end) = info.data_offsets;
        let bytes = data
            .get(data_start + start..data_start + end)
            .unwrap_or_else(|| panic!("accepted tensor `{name}` lies outside the file"));
        let elements: usize = info.shape.iter().product();
        let bits = elements * info.dtype.bitsize();
        assert_eq!(bytes.len() * 8, bits, "tensor `{name}`: bytes vs shape × dtype");
    }
    // The full deserialisation agrees with the header check.
    let tensors = SafeTensors::deserialize(data).expect("deserialize what read_metadata accepted");
    for (_, view) in tensors.tensors() {
        let _ = view.data().len();
    }
});
