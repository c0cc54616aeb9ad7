//! Reading dataset files: a JSON array of records or JSON Lines (one record per line), detected
//! from the first non-blank byte (`[` means array), whatever the extension. Each record keeps the
//! line it starts on so later errors can name `file:line`.

use std::path::Path;

use serde_json::Value;

use crate::error::DataError;

/// One record and where it came from.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// 1-based line the record starts on.
    pub line: usize,
    pub value: Value,
}

/// The records of one file, plus the malformed lines that were skipped (only with `skip_bad`).
#[derive(Debug, Default)]
pub struct FileRecords {
    pub records: Vec<RawRecord>,
    /// `file:line:column: message` of each skipped malformed line.
    pub skipped: Vec<String>,
}

/// Reads at most `limit` records from `path`. A JSON Lines syntax error is an error naming the line
/// and column, or with `skip_bad` a skipped (and reported) line. A JSON array with a syntax error is
/// always an error: after one, the rest of the array cannot be located reliably.
pub fn read_records(
    path: &Path,
    limit: Option<usize>,
    skip_bad: bool,
) -> Result<FileRecords, DataError> {
    let bytes = crate::files::read_regular(path)?;
    let bytes = bytes
        .strip_prefix(b"\xEF\xBB\xBF".as_slice())
        .unwrap_or(&bytes); // UTF-8 BOM
    let first = bytes.iter().position(|b| !b.is_ascii_whitespace());
    match first.map(|i| bytes[i]) {
        None => Ok(FileRecords::default()),
        Some(b'[') => read_array(path, bytes, limit),
        Some(_) => read_lines(path, bytes, limit, skip_bad),
    }
}

fn read_lines(
    path: &Path,
    bytes: &[u8],
    limit: Option<usize>,
    skip_bad: bool,
) -> Result<FileRecords, DataError> {
    let mut out = FileRecords::default();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if limit.is_some_and(|n| out.records.len() + out.skipped.len() >= n) {
            break;
        }
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(value) => out.records.push(RawRecord { line: i + 1, value }),
            Err(e) => {
                let err = DataError::BadRecord {
                    path: path.to_path_buf(),
                    line: i + 1,
                    column: Some(e.column()),
                    message: format!("malformed JSON line: {e}"),
                };
                if !skip_bad {
                    return Err(err);
                }
                out.skipped.push(err.to_string());
            }
        }
    }
    Ok(out)
}

fn read_array(path: &Path, bytes: &[u8], limit: Option<usize>) -> Result<FileRecords, DataError> {
    let syntax_error = || match serde_json::from_slice::<Value>(bytes) {
        Err(e) => DataError::BadRecord {
            path: path.to_path_buf(),
            line: e.line(),
            column: Some(e.column()),
            message: format!("malformed JSON: {e}"),
        },
        Ok(_) => DataError::BadRecord {
            path: path.to_path_buf(),
            line: 1,
            column: None,
            message: "malformed JSON array".into(),
        },
    };
    let mut out = FileRecords::default();
    let skip_ws = |mut p: usize| {
        while p < bytes.len() && bytes[p].is_ascii_whitespace() {
            p += 1;
        }
        p
    };
    // Line numbers are counted incrementally as the cursor advances.
    let (mut line, mut counted) = (1usize, 0usize);
    let mut pos = skip_ws(0) + 1; // past '['
    pos = skip_ws(pos);
    if bytes.get(pos) == Some(&b']') {
        return Ok(out);
    }
    loop {
        if limit.is_some_and(|n| out.records.len() >= n) {
            return Ok(out);
        }
        line += bytes[counted..pos].iter().filter(|&&b| b == b'\n').count();
        counted = pos;
        let mut stream = serde_json::Deserializer::from_slice(&bytes[pos..]).into_iter::<Value>();
        let value = match stream.next() {
            Some(Ok(v)) => v,
            _ => return Err(syntax_error()),
        };
        out.records.push(RawRecord { line, value });
        pos = skip_ws(pos + stream.byte_offset());
        match bytes.get(pos) {
            Some(b',') => pos = skip_ws(pos + 1),
            Some(b']') => return Ok(out),
            _ => return Err(syntax_error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_str(
        text: &str,
        limit: Option<usize>,
        skip_bad: bool,
    ) -> Result<FileRecords, DataError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.json");
        std::fs::write(&path, text).unwrap();
        read_records(&path, limit, skip_bad)
    }

    #[test]
    fn arrays_report_each_record_line() {
        let r = read_str(
            "\u{feff}[\n {\"a\": 1},\n\n {\"a\": [1,\n 2]}, {\"a\": 3}\n]",
            None,
            false,
        )
        .unwrap();
        let lines: Vec<usize> = r.records.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![2, 4, 5]);
        assert_eq!(read_str("[ ]", None, false).unwrap().records.len(), 0);
        assert_eq!(read_str("", None, false).unwrap().records.len(), 0);
        assert_eq!(
            read_str("[{\"a\":1},{\"a\":2},{\"a\":3}]", Some(2), false)
                .unwrap()
                .records
                .len(),
            2
        );
        let err = read_str("[{\"a\":1}\n{\"a\":2}]", None, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("d.json:2:"), "{err}");
    }

    #[test]
    fn json_lines_skip_blank_lines_and_count_limits() {
        let r = read_str("{\"a\":1}\n\n{\"a\":2}\r\n{\"a\":3}\n", Some(2), false).unwrap();
        assert_eq!(
            r.records.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![1, 3]
        );
        let r = read_str("{\"a\":1}\n{bad\n{\"a\":3}\n", None, true).unwrap();
        assert_eq!((r.records.len(), r.skipped.len()), (2, 1));
        assert!(r.skipped[0].contains("d.json:2:"), "{:?}", r.skipped);
    }
}
