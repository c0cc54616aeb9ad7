//! libtorch's profiler through the shim: a profiled matmul loop with step ranges is saved as a
//! Chrome trace holding the steps and the aten operators, and the summary reads it back.

use lf_profile::summary::{summarize_file, Bottleneck, PhaseSplit};
use lf_profile::Session;
use tch::{Device, Kind, Tensor};

#[test]
fn a_trace_holds_the_step_markers_and_the_operators() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.json");
    let a = Tensor::randn([256, 256], (Kind::Float, Device::Cpu));
    let session = Session::start(false).unwrap();
    for step in 1..=3 {
        let _range = session.range(&format!("ProfilerStep#{step}"));
        let b = a.matmul(&a).relu();
        let _ = b.sum(Kind::Float).double_value(&[]);
    }
    session.save(&path).unwrap();

    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let names: Vec<&str> = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for step in ["ProfilerStep#1", "ProfilerStep#2", "ProfilerStep#3"] {
        assert!(names.contains(&step), "{step} missing");
    }
    assert!(
        names.contains(&"aten::matmul") || names.contains(&"aten::mm"),
        "{names:?}"
    );

    let split = PhaseSplit {
        data: 0.001,
        forward_backward: 0.1,
        optimizer: 0.0,
    };
    let s = summarize_file(&path, split).unwrap();
    assert_eq!(s.steps, 3);
    assert!(
        s.ops.iter().any(|o| o.name == "aten::mm" && o.calls == 3),
        "{s}"
    );
    assert!(matches!(s.bottleneck, Bottleneck::Operator { .. }), "{s}");
    println!("{s}");

    // A second session in the same process works too (one window per run, but nothing global
    // is left behind).
    let again = Session::start(false).unwrap();
    drop(again);
}
