//! `lf_api::runtime::TerminationReport::parse` on arbitrary text (a termination message is written
//! by whatever runs in the trainer container): never a panic; what it accepts serialises and
//! parses back to the same report.
#![no_main]

use lf_api::runtime::TerminationReport;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(report) = TerminationReport::parse(text) else {
        return;
    };
    let json = serde_json::to_string(&report).expect("serialise a parsed report");
    assert_eq!(TerminationReport::parse(&json).as_ref(), Some(&report));
});
