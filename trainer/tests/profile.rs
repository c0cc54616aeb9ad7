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

/// The loop's profiler around steps whose data wait is slowed on purpose (a sleep where the loop
/// would wait for its batch, measured the way the loop measures it): the summary names data loading.
#[test]
fn a_slow_data_path_is_named_in_the_summary() {
    use std::time::Instant;

    use lf_trainer::profiling::StepProfiler;
    use lf_trainer::report::StepOutcome;
    use tch::{Device, Kind, Tensor};

    let dir = tempfile::tempdir().unwrap();
    let cfg = lf_api::training::TrainingConfig {
        profile_steps: Some("1-3".into()),
        ..Default::default()
    };
    let mut profiler = StepProfiler::new(&cfg, dir.path(), 0, Device::Cpu).unwrap();
    let a = Tensor::randn([128, 128], (Kind::Float, Device::Cpu));
    for step in 1..=3 {
        profiler.before(step);
        let t = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(60));
        let data_secs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = a.matmul(&a).sum(Kind::Float).double_value(&[]);
        let compute_secs = t.elapsed().as_secs_f64();
        let outcome = StepOutcome {
            loss: 1.0,
            lr: 1e-4,
            grad_norm: 1.0,
            tokens: 128,
            samples: 1,
            data_secs,
            compute_secs,
            optimizer_secs: 0.0,
            forward_secs: None,
            preference: None,
        };
        profiler.after(step, &outcome);
    }
    let summary = std::fs::read_to_string(dir.path().join("profile/summary-rank0.txt")).unwrap();
    assert!(
        summary.contains("hint: data loading dominates"),
        "{summary}"
    );
}
