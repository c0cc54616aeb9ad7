//! TFRecord framing, the container of TensorBoard event files: each record is its length (u64,
//! little-endian), the masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the
//! data (`tensorflow/core/lib/io/record_writer.cc`).

use std::io::{self, Write};

/// TensorFlow's CRC mask: rotate right by 15 bits and add a constant.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Writes one record holding `data`.
pub fn write_record(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc(&len).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc(data).to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_a_record_with_masked_crcs() {
        let mut out = Vec::new();
        write_record(&mut out, b"abc").unwrap();
        assert_eq!(out.len(), 8 + 4 + 3 + 4);
        assert_eq!(&out[..8], &3u64.to_le_bytes());
        assert_eq!(&out[12..15], b"abc");
        // CRC-32C("abc") is 0x364b3fb7 (RFC 3720's test vectors give the algorithm); masked:
        let masked = 0x364b_3fb7u32.rotate_right(15).wrapping_add(0xa282_ead8);
        assert_eq!(&out[15..], &masked.to_le_bytes());
    }
}
