//! System metrics: this process's CPU and memory, the host, `/dev/shm`, and GPUs through NVML —
//! here a stand-in library with two GPUs (`fixtures/fake_nvml.c`, compiled by the test), since the
//! CI machine has no driver; without NVML there are no GPU figures and no error.

use std::path::Path;
use std::process::Command;

use lf_trainer::system::{GpuSample, SystemGauges, SystemProbe};

fn fake_nvml(dir: &Path) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_nvml.c");
    let lib = dir.join("libnvidia-ml.so.1");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib.to_string_lossy().into_owned()
}

#[test]
fn gpus_come_from_nvml_and_its_absence_is_not_an_error() {
    let none = SystemProbe::with_nvml_library("/no/such/libnvidia-ml.so.1");
    let s = none.sample();
    assert!(s.gpus.is_empty());
    assert!(s.process_rss_bytes.is_some() && s.host_memory_total_bytes.is_some());

    let dir = tempfile::tempdir().unwrap();
    let probe = SystemProbe::with_nvml_library(&fake_nvml(dir.path()));
    let s = probe.sample();
    assert_eq!(
        s.gpus,
        vec![
            GpuSample {
                index: 0,
                utilization_percent: Some(40.0),
                memory_used_bytes: Some(1 << 30),
                memory_total_bytes: Some(80 << 30),
                temperature_celsius: Some(60.0),
                power_watts: Some(250.5),
            },
            GpuSample {
                index: 1,
                utilization_percent: Some(90.0),
                memory_used_bytes: Some(2 << 30),
                memory_total_bytes: Some(80 << 30),
                temperature_celsius: Some(61.0),
                power_watts: None,
            },
        ]
    );
    let names: Vec<String> = probe
        .sample()
        .scalars()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for n in [
        "system/cpu_percent",
        "system/rss_bytes",
        "system/gpu1/utilization_percent",
        "system/gpu0/power_watts",
    ] {
        assert!(names.contains(&n.to_string()), "{n} in {names:?}");
    }
    assert!(!names.contains(&"system/gpu1/power_watts".to_string()));

    let registry = prometheus::Registry::new();
    SystemGauges::register(&registry).update(&s);
    let mut text = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut text,
    )
    .unwrap();
    let text = String::from_utf8(text).unwrap();
    for line in [
        "lf_trainer_gpu_power_watts{gpu=\"0\"} 250.5",
        "lf_trainer_gpu_utilization_percent{gpu=\"1\"} 90",
        "lf_trainer_gpu_memory_total_bytes{gpu=\"1\"} 85899345920",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(text.contains("lf_trainer_process_resident_memory_bytes "));
}
