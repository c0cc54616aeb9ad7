//! The safetensors reader parses a file's header once, whatever the number of tensors, and a
//! hostile header is an error naming the file (never a panic, a hang or a huge allocation).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lf_model::safetensors_io::{write_file, HostTensor, MappedFile};
use tch::{Device, Kind, Tensor};

/// A safetensors file from a raw header and data section.
fn raw_file(path: &Path, header_len: u64, header: &str, data: &[u8]) {
    let mut bytes = header_len.to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

fn open_err(path: &Path) -> String {
    match MappedFile::open(path) {
        Ok(_) => panic!("{} should be refused", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn many_tensors_load_in_linear_time() {
    // Re-parsing a 20,000-entry header (~1.4 MB of JSON) for each tensor took minutes; parsing
    // once takes well under a second.
    const N: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.safetensors");
    let map: BTreeMap<String, HostTensor> = (0..N)
        .map(|i| {
            let name = format!("model.layers.{i}.weight");
            let t = Tensor::from_slice(&[i as f32]);
            let host = HostTensor::from_tensor(&name, &t).unwrap();
            (name, host)
        })
        .collect();
    write_file(&path, &map).unwrap();
    let started = Instant::now();
    let file = MappedFile::open(&path).unwrap();
    let names = file.names().unwrap();
    assert_eq!(names.len(), N);
    let mut sum = 0.0;
    for name in &names {
        sum += file
            .load(name, Some(Kind::Double), Device::Cpu)
            .unwrap()
            .double_value(&[0]);
    }
    let took = started.elapsed();
    assert_eq!(sum, (0..N).map(|i| i as f64).sum::<f64>());
    assert!(
        took < Duration::from_secs(20),
        "loading {N} one-element tensors took {took:?}: the header is parsed more than once"
    );
}

#[test]
fn hostile_headers_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // A declared header length far beyond the file (and beyond any sane header).
    let huge = dir.path().join("huge.safetensors");
    raw_file(&huge, u64::MAX, "{}", b"");
    let err = open_err(&huge);
    assert!(err.contains("huge.safetensors"), "{err}");
    let long = dir.path().join("long.safetensors");
    raw_file(&long, 50 << 20, "{}", b"");
    let err = open_err(&long);
    assert!(err.contains("long.safetensors"), "{err}");
    // Two tensors sharing bytes.
    let overlap = dir.path().join("overlap.safetensors");
    let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    raw_file(&overlap, header.len() as u64, header, &[0u8; 12]);
    let err = open_err(&overlap);
    assert!(err.contains("overlap.safetensors"), "{err}");
    // Offsets past the end of the data.
    let past = dir.path().join("past.safetensors");
    let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    raw_file(&past, header.len() as u64, header, &[0u8; 8]);
    let err = open_err(&past);
    assert!(err.contains("past.safetensors"), "{err}");
    // A shape whose element count overflows.
    let overflow = dir.path().join("overflow.safetensors");
    let header = r#"{"a":{"dtype":"F32","shape":[18446744073709551615,4],"data_offsets":[0,8]}}"#;
    raw_file(&overflow, header.len() as u64, header, &[0u8; 8]);
    let err = open_err(&overflow);
    assert!(err.contains("overflow.safetensors"), "{err}");
}
