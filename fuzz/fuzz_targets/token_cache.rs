//! `lf_data::cache::read` on arbitrary bytes: never a panic, an abort or an allocation beyond what
//! the file could hold (libFuzzer's -rss_limit_mb and -malloc_limit_mb catch those); whatever it
//! accepts, `cache::write` writes back and `cache::read` reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("scratch.rs");

fuzz_target!(|data: &[u8]| {
    let path = scratch_file("input.lfdata", data);
    let Ok((stats, train, eval)) = lf_data::cache::read(&path) else {
        return;
    };
    let again = scratch_dir().join("again.lfdata");
    lf_data::cache::write(&again, &stats, &train, &eval).expect("rewrite an accepted cache");
    let (stats2, train2, eval2) = lf_data::cache::read(&again).expect("read back a written cache");
    assert_eq!(stats, stats2);
    assert_eq!(train, train2);
    assert_eq!(eval, eval2);
    // Every example's ids and labels have the same length (the layout stores one length for both).
    for ex in train.iter().chain(&eval) {
        assert_eq!(ex.input_ids.len(), ex.labels.len());
    }
});
