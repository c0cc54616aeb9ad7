//! `profile_steps` end to end: the tiny run records steps 2-3 with libtorch's profiler into a
//! Chrome trace holding both step markers and the model's operators, and writes a summary with the
//! top operators and a bottleneck hint; a malformed window is a config error before training.

mod tiny_run;

use tiny_run::{stderr, trainer, write_config};

#[test]
fn steps_2_to_3_become_a_trace_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "profile_steps: 2-3\n");
    let o = trainer(&["train", cfg.to_str().unwrap()], &[]);
    assert!(o.status.success(), "train failed: {}", stderr(&o));
    let profile = dir.path().join("out/profile");
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(profile.join("trace-rank0.json")).unwrap())
            .expect("the trace is JSON");
    let events = trace["traceEvents"]
        .as_array()
        .expect("Chrome trace events");
    let names: Vec<&str> = events.iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(names.contains(&"ProfilerStep#2") && names.contains(&"ProfilerStep#3"));
    assert!(!names.contains(&"ProfilerStep#1") && !names.contains(&"ProfilerStep#4"));
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("aten::mm") || n.starts_with("aten::addmm")),
        "the model's matmuls are in the trace"
    );
    let summary = std::fs::read_to_string(profile.join("summary-rank0.txt")).unwrap();
    assert!(
        summary.starts_with("steps 2-3, rank 0\nprofiled 2 steps: data "),
        "{summary}"
    );
    assert!(summary.contains("\nhint: "), "{summary}");
    assert!(
        stderr(&o).contains("profile of steps 2-3"),
        "rank 0 logs it"
    );

    let cfg = write_config(dir.path(), "profile_steps: 4-2\n");
    let o = trainer(&["train", cfg.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("profile_steps"), "{}", stderr(&o));
}
