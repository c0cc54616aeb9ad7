//! Hostile checkpoint markers and model indexes (issue 14 item 12 c). A completion marker is
//! input like any other file: one that lists `../outside`, an absolute path or a FIFO makes its
//! checkpoint invalid (resume falls back to an older valid one) without blocking or reading
//! outside the checkpoint. A model index that does the same ends the `lf-trainer` binary with
//! exit 2 and one error line naming the index, within a time limit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;

use lf_api::training::TrainingConfig;
use lf_trainer::checkpoint_dir::{self as checkpoint, FileDigest, Manifest, MARKER};
use lf_trainer::error::TrainerError;
use lf_trainer::resume::{resolve, Start};

mod tiny_run;

use tiny_run::{run_bounded, LIMIT};

/// The marker's record of an empty file.
static EMPTY: std::sync::LazyLock<FileDigest> = std::sync::LazyLock::new(|| FileDigest {
    bytes: 0,
    sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
});

/// Runs `f` on its own thread and fails the test when it has not returned within [`LIMIT`] (the
/// blocked thread dies with the test process).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(LIMIT)
        .unwrap_or_else(|_| panic!("{what}: still blocked after {LIMIT:?}"))
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

fn save(out: &Path, step: u64) -> PathBuf {
    checkpoint::write_atomic(out, step, |d| {
        std::fs::write(d.join("weights.bin"), format!("weights {step}"))
            .map_err(|e| TrainerError::io("write", d, e))
    })
    .unwrap()
}

fn read_manifest(dir: &Path) -> Manifest {
    serde_json::from_slice(&std::fs::read(dir.join(MARKER)).unwrap()).unwrap()
}

fn write_manifest(dir: &Path, m: &Manifest) {
    std::fs::write(dir.join(MARKER), serde_json::to_vec(m).unwrap()).unwrap();
}

/// Checkpoints 2 and 4 in `out`; `tamper` edits checkpoint 4. Checks that checkpoint 4 is
/// invalid with an error naming `file`, and that resume (auto) falls back to checkpoint 2.
fn assert_falls_back(name: &str, file: &str, tamper: impl FnOnce(&Path, &Path)) {
    let out = tempfile::tempdir().unwrap();
    save(out.path(), 2);
    let newest = save(out.path(), 4);
    tamper(out.path(), &newest);

    let dir = newest.clone();
    let why = bounded(&format!("{name}: verify"), move || {
        checkpoint::verify(&dir).err().map(|e| e.to_string())
    })
    .unwrap_or_else(|| panic!("{name}: the tampered checkpoint verified"));
    assert!(why.contains(file), "{name}: `{file}` not in: {why}");

    let out_dir = out.path().to_path_buf();
    let start = bounded(&format!("{name}: resume"), move || {
        resolve(&TrainingConfig::default(), &out_dir, true).map_err(|e| e.to_string())
    });
    assert_eq!(
        start.unwrap(),
        Start::Resume(out.path().join("checkpoint-2")),
        "{name}"
    );
}

#[test]
fn markers_naming_files_outside_the_checkpoint_make_it_invalid() {
    // The outside file matches the recorded size and checksum, so only confinement refuses it.
    assert_falls_back("parent", "../outside", |out, ckpt| {
        std::fs::copy(ckpt.join("weights.bin"), out.join("outside")).unwrap();
        let mut m = read_manifest(ckpt);
        let digest = m.files["weights.bin"].clone();
        m.files.insert("../outside".into(), digest);
        write_manifest(ckpt, &m);
    });
    let outside = tempfile::tempdir().unwrap();
    let abs = outside.path().join("outside");
    let abs_name = abs.display().to_string();
    assert_falls_back("absolute", &abs_name.clone(), move |_, ckpt| {
        std::fs::copy(ckpt.join("weights.bin"), &abs).unwrap();
        let mut m = read_manifest(ckpt);
        let digest = m.files["weights.bin"].clone();
        m.files.insert(abs_name, digest);
        write_manifest(ckpt, &m);
    });
}

#[test]
fn a_fifo_in_a_checkpoint_makes_it_invalid_without_blocking() {
    // A FIFO listed with the size and checksum of an empty file: only its type refuses it.
    assert_falls_back("listed FIFO", "pipe", |_, ckpt| {
        mkfifo(&ckpt.join("pipe"));
        let mut m = read_manifest(ckpt);
        m.files.insert("pipe".into(), EMPTY.clone());
        write_manifest(ckpt, &m);
    });
    assert_falls_back("FIFO marker", MARKER, |_, ckpt| {
        std::fs::remove_file(ckpt.join(MARKER)).unwrap();
        mkfifo(&ckpt.join(MARKER));
    });
}

#[test]
fn a_hostile_model_index_exits_2_with_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(tiny_run::assets().join("model")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    mkfifo(&model.join("pipe.safetensors"));
    let cfg = tiny_run::write_config(dir.path(), "");
    let model_arg = format!("model_name_or_path={}", model.display());
    for (file, needle) in [
        ("/etc/passwd", "not a relative path inside"),
        ("../model.safetensors", "not a relative path inside"),
        ("pipe.safetensors", "not a regular file (a FIFO)"),
    ] {
        let index = serde_json::json!({"weight_map": {"lm_head.weight": file}});
        std::fs::write(
            model.join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        let args = ["train", cfg.to_str().unwrap(), &model_arg];
        let (code, err) = run_bounded(&args);
        assert_eq!(code, Some(2), "{file}:\n{err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{file}: one error line expected:\n{err}");
        for n in [
            "model.safetensors.index.json",
            "weight_map entry `lm_head.weight`",
            file,
            needle,
        ] {
            assert!(lines[0].contains(n), "`{n}` not in: {}", lines[0]);
        }
        assert!(!err.contains("panicked"), "{err}");
    }
}
