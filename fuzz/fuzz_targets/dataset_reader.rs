//! `lf_data::reader::read_records` on arbitrary bytes, as JSON Lines or a JSON array, with and
//! without `skip_bad` and a record limit: never a panic; the records it returns keep their order
//! and name lines that exist in the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("scratch.rs");

fuzz_target!(|data: &[u8]| {
    // The first byte picks the options; the rest is the file.
    let Some((&opts, body)) = data.split_first() else {
        return;
    };
    let skip_bad = opts & 1 == 1;
    let limit = (opts & 2 == 2).then_some(usize::from(opts >> 2));
    let path = scratch_file("records.jsonl", body);
    let Ok(out) = lf_data::reader::read_records(&path, limit, skip_bad) else {
        return;
    };
    let lines = body.split(|&b| b == b'\n').count();
    let mut last = 0;
    for rec in &out.records {
        assert!(rec.line >= 1 && rec.line <= lines, "line {} of {lines}", rec.line);
        assert!(rec.line >= last, "records out of order");
        last = rec.line;
    }
    if let Some(n) = limit {
        assert!(out.records.len() + out.skipped.len() <= n);
    }
    if !skip_bad {
        assert!(out.skipped.is_empty());
    }
});
