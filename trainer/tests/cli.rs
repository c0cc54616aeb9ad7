//! The `lf-trainer` binary end to end on a tiny random Llama made by
//! `tests/reference/trainer_make_tiny.py` (the Python reference stack must be installed).

use std::path::Path;
use std::process::Command;

mod tiny_run;

use tiny_run::{stderr, trainer, write_config};

#[test]
fn train_eval_export_chat() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "plot_loss: true\nval_size: 8\neval_strategy: steps\neval_steps: 3\n",
    );
    let status = dir.path().join("status.jsonl");
    let o = trainer(
        &["train", cfg.to_str().unwrap()],
        &[("LF_STATUS_FILE", &status)],
    );
    assert!(o.status.success(), "train failed: {}", stderr(&o));
    let out = dir.path().join("out");
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "trainer_log.jsonl",
        "all_results.json",
        "trainer_state.json",
        "training_loss.png",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("all_results.json")).unwrap())
            .unwrap();
    for k in [
        "train_loss",
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "epoch",
        "eval_loss",
    ] {
        assert!(
            results[k].is_number(),
            "all_results.json lacks {k}: {results}"
        );
    }
    let log = std::fs::read_to_string(out.join("trainer_log.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    for k in [
        "current_steps",
        "total_steps",
        "loss",
        "lr",
        "grad_norm",
        "epoch",
        "percentage",
        "elapsed_time",
        "remaining_time",
        "throughput",
        "step_time",
        "peak_memory_bytes",
    ] {
        assert!(!first[k].is_null(), "trainer_log.jsonl lacks {k}: {first}");
    }
    let ckpts: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(ckpts.len(), 2, "save_total_limit 2: {ckpts:?}");
    let last = std::fs::read_to_string(&status)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let last: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(last["status"]["progress"]["stepDisplay"], "6/6", "{last}");
    // Percent and ETA (the recent step rate): 100 % and nothing left at the end, a time left
    // after the first logged step.
    assert_eq!(last["status"]["progress"]["percentComplete"], 100.0);
    assert_eq!(last["status"]["progress"]["remaining"], "0s");
    let first = std::fs::read_to_string(&status)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["status"]["progress"]["step"] == 2)
        .expect("a status line at step 2");
    let p = &first["status"]["progress"];
    assert_eq!(p["percentComplete"], 33.33, "{p}");
    assert!(
        p["remaining"].as_str().is_some_and(|r| r.ends_with('s')),
        "{p}"
    );
    assert!(p["estimatedCompletionTime"].as_str().is_some(), "{p}");
    assert!(
        last["status"]["checkpoints"]
            .as_array()
            .is_some_and(|c| !c.is_empty()),
        "{last}"
    );

    // A second run with the same config resumes: it finds the finished steps' checkpoint and only
    // runs what is left (nothing past step 6 exists, so it resumes at 4 and trains 2 steps).
    let o = trainer(&["train", cfg.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resum"), "{}", stderr(&o));

    let adapter = format!("adapter_name_or_path={}", out.display());
    let o = trainer(&["eval", cfg.to_str().unwrap(), &adapter], &[]);
    assert!(o.status.success(), "eval failed: {}", stderr(&o));
    let eval: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        (eval["eval_perplexity"].as_f64().unwrap() - eval["eval_loss"].as_f64().unwrap().exp())
            .abs()
            < 1e-6
    );

    let export = format!("export_dir={}", dir.path().join("merged").display());
    let o = trainer(&["export", cfg.to_str().unwrap(), &adapter, &export], &[]);
    assert!(o.status.success(), "export failed: {}", stderr(&o));
    assert!(
        dir.path().join("merged/config.json").is_file()
            && dir.path().join("merged/tokenizer.json").is_file()
    );

    let o = trainer(
        &[
            "chat",
            "--prompt",
            "tell me the cat",
            cfg.to_str().unwrap(),
            &adapter,
        ],
        &[],
    );
    assert!(o.status.success(), "chat failed: {}", stderr(&o));
}

/// Each bad input gives exit code 2 and one `error:` line that names the culprit.
#[test]
fn bad_inputs_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let c = cfg.to_str().unwrap();
    let malformed = dir.path().join("bad.yaml");
    std::fs::write(&malformed, "lora_rank: [unclosed\n").unwrap();
    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(&unknown, "lora_rnak: 8\n").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "train".into(),
                c.into(),
                "model_name_or_path=/no/such/model".into(),
            ],
            "/no/such/model",
        ),
        (
            vec!["train".into(), c.into(), "dataset=missing_set".into()],
            "missing_set",
        ),
        (
            vec!["train".into(), malformed.display().to_string()],
            "bad.yaml",
        ),
        (
            vec!["train".into(), unknown.display().to_string()],
            "lora_rank",
        ),
        (
            vec!["train".into(), c.into(), "lora_rank=eight".into()],
            "lora_rank",
        ),
        (
            vec![
                "train".into(),
                c.into(),
                "resume_from_checkpoint=/no/checkpoint-3".into(),
            ],
            "/no/checkpoint-3",
        ),
        (
            vec![
                "train".into(),
                dir.path().join("absent.yaml").display().to_string(),
            ],
            "absent.yaml",
        ),
        (vec!["export".into(), c.into()], "export_dir"),
    ];
    for (args, needle) in cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = trainer(&refs, &[]);
        let err = stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?} should be a config error:\n{err}"
        );
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one error line expected:\n{err}");
        assert!(
            lines[0].contains(needle),
            "{args:?}: the error should name `{needle}`: {}",
            lines[0]
        );
    }
}

fn read_adapter(dir: &Path) -> Vec<(String, tch::Tensor)> {
    let mut t = tch::Tensor::read_safetensors(dir.join("adapter_model.safetensors")).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// Two data-parallel ranks (Gloo) with batch 2 train exactly what one process with batch 4 does.
#[test]
fn two_ranks_equal_one_process_with_the_global_batch() {
    let one = tempfile::tempdir().unwrap();
    let cfg1 = write_config(one.path(), "max_grad_norm: 0\n");
    let o = trainer(
        &[
            "train",
            cfg1.to_str().unwrap(),
            "per_device_train_batch_size=4",
            "gradient_accumulation_steps=1",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let two = tempfile::tempdir().unwrap();
    let cfg2 = write_config(two.path(), "max_grad_norm: 0\n");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let mut procs: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(env!("CARGO_BIN_EXE_lf-trainer"))
                .args([
                    "train",
                    cfg2.to_str().unwrap(),
                    "per_device_train_batch_size=2",
                    "gradient_accumulation_steps=1",
                ])
                .env_remove("LF_STATUS_FILE")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("WORLD_SIZE", "2")
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in procs.iter_mut() {
        let status = p.wait().unwrap();
        assert!(status.success(), "a rank failed");
    }
    let a = read_adapter(&one.path().join("out"));
    let b = read_adapter(&two.path().join("out"));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let d = (ta - tb).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{na} differs by {d}");
    }
}

/// SIGTERM mid-run: the current step finishes, a checkpoint is written, the exit code is 143, and
/// the next run resumes from that checkpoint.
#[test]
fn sigterm_checkpoints_and_exits_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let out = dir.path().join("out");
    let child = Command::new(env!("CARGO_BIN_EXE_lf-trainer"))
        .args([
            "train",
            cfg.to_str().unwrap(),
            "max_steps=100000",
            "save_steps=0",
            "logging_steps=1",
        ])
        .env_remove("LF_STATUS_FILE")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = out.join("trainer_log.jsonl");
    let started = std::time::Instant::now();
    while !log.exists() {
        assert!(
            started.elapsed().as_secs() < 120,
            "training never logged a step"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(143), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("checkpoint-"),
        "{err}"
    );
    let ck =
        lf_trainer::checkpoint::newest_valid(&out).expect("a complete checkpoint after SIGTERM");
    assert!(ck.step >= 1);
    let o = trainer(
        &[
            "train",
            cfg.to_str().unwrap(),
            "max_steps=2",
            "save_steps=0",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("checkpoint-{}", ck.step)),
        "{}",
        stderr(&o)
    );
}
