//! The environment the operator renders for an Indexed Job of 2 pods × 2 processes, run by
//! `lf-operator local` as local processes on 127.0.0.1 (each pod's `lf-trainer` launching its
//! 2 workers, Gloo over TCPStore), trains the bundled quick-start model to the same adapter as
//! one process with the same global batch — with ZeRO stage 2, and stage 3, partitioning across
//! the 4 ranks. A DPO job on the quick start's preference pairs does the same under ZeRO-2, and its
//! final status carries the preference metrics.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `lf-trainer`, built next to `lf-operator` by the workspace's test build.
fn trainer_bin() -> PathBuf {
    let op = PathBuf::from(env!("CARGO_BIN_EXE_lf-operator"));
    let t = op.with_file_name("lf-trainer");
    assert!(
        t.exists(),
        "{} is missing: build the workspace (`cargo test --workspace` or `cargo build --bin lf-trainer`)",
        t.display()
    );
    t
}

/// The quick-start job, shortened: global batch 8 (= 8 × 1 on one process = 2 × 1 × 4 ranks);
/// with `dpo`, `stage: dpo` on the quick start's preference pairs (`opposites_pref`).
fn job(dir: &Path, zero: &str, dpo: bool) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("examples/quickstart.yaml")).unwrap();
    let mut job: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let t = &mut job["spec"]["training"];
    for (k, v) in [
        ("max_steps", serde_yaml::Value::from(4)),
        ("per_device_train_batch_size", 2.into()),
        ("gradient_accumulation_steps", 4.into()),
        ("eval_strategy", "no".into()),
        ("plot_loss", false.into()),
        ("save_steps", 0.into()),
        ("max_grad_norm", 0.5.into()),
    ] {
        t[k] = v;
    }
    if let Some(m) = t.as_mapping_mut() {
        m.remove("eval_dataset");
        m.remove("eval_steps");
    }
    if dpo {
        t["stage"] = "dpo".into();
        t["dataset"] = "opposites_pref".into();
    }
    job["spec"]["distributed"]["zeroStage"] = zero.into();
    let path = dir.join("job.yaml");
    std::fs::write(&path, serde_yaml::to_string(&job).unwrap()).unwrap();
    path
}

fn run_local(dir: &Path, zero: &str, dpo: bool, extra: &[&str]) -> PathBuf {
    let job = job(dir, zero, dpo);
    let work = dir.join("work");
    let out = Command::new(env!("CARGO_BIN_EXE_lf-operator"))
        .arg("local")
        .arg("-f")
        .arg(&job)
        .arg("--workdir")
        .arg(&work)
        .arg("--volume")
        .arg(format!(
            "quickstart={}",
            repo_root().join("examples/quickstart").display()
        ))
        .arg("--trainer")
        .arg(trainer_bin())
        .args(extra)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lf-operator local {extra:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    find(&work, "adapter_model.safetensors")
        .unwrap_or_else(|| panic!("no adapter under {}", work.display()))
}

fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("checkpoint-"))
            {
                continue;
            }
            if let Some(f) = find(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

#[test]
fn two_pods_of_two_processes_train_what_one_process_does() {
    let one = tempfile::tempdir().unwrap();
    let a = run_local(one.path(), "0", false, &[]);
    for zero in ["2", "3"] {
        let four = tempfile::tempdir().unwrap();
        let b = run_local(
            four.path(),
            zero,
            false,
            &["--gpus", "4", "--nproc-per-node", "2"],
        );
        let worst = max_diff(&a, &b);
        assert!(
            worst < 1e-5,
            "the 2×2 adapter (ZeRO-{zero}) differs by {worst}"
        );
    }
}

/// The largest difference between two adapters' tensors.
fn max_diff(a: &Path, b: &Path) -> f64 {
    let mut ta = tch_free_read(a);
    ta.sort_by(|x, y| x.0.cmp(&y.0));
    let mut tb = tch_free_read(b);
    tb.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(ta.len(), tb.len());
    let mut worst = 0.0f64;
    for ((na, va), (nb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert_eq!(va.len(), vb.len(), "{na}");
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs() as f64);
        }
    }
    worst
}

#[test]
fn a_dpo_job_runs_locally_reports_preference_metrics_and_partitions_exactly() {
    let one = tempfile::tempdir().unwrap();
    let status = one.path().join("final.yaml");
    let status_arg = status.display().to_string();
    let a = run_local(one.path(), "0", true, &["--status-out", &status_arg]);
    let text = std::fs::read_to_string(&status).unwrap();
    let fin: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let p = &fin["status"]["progress"]["preference"];
    for key in [
        "rewardsChosen",
        "rewardsRejected",
        "rewardsAccuracies",
        "rewardsMargins",
        "logpsChosen",
        "logpsRejected",
    ] {
        assert!(p[key].as_f64().is_some(), "{key} missing from {text}");
    }
    let four = tempfile::tempdir().unwrap();
    let b = run_local(
        four.path(),
        "2",
        true,
        &["--gpus", "4", "--nproc-per-node", "2"],
    );
    let worst = max_diff(&a, &b);
    assert!(
        worst < 1e-5,
        "the 2×2 DPO adapter (ZeRO-2) differs by {worst}"
    );
}

/// The adapter's tensors as f32 vectors, read with the `safetensors` crate (no libtorch here).
fn tch_free_read(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let v = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, v)
        })
        .collect()
}
