//! A hostile `model.safetensors.index.json` (issue 14 item 12): a `weight_map` entry naming an
//! absolute path, a `..` path or a FIFO, or an index that is itself a FIFO, ends in an error that
//! names the index (and the entry) within a time bound; it never reads outside the model
//! directory and never blocks on a FIFO.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use lf_model::safetensors_io::{weight_files, MappedFile};
use lf_model::ModelError;

/// Generous: the bound a blocked `open` would exceed, not a speed target.
const LIMIT: Duration = Duration::from_secs(20);

/// Runs `f` on its own thread and fails the test when it has not returned within [`LIMIT`] (a
/// regression that blocks on a FIFO must not hang CI; the blocked thread dies with the process).
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

/// A model directory `root/model` whose index maps tensor `t` to `file`.
fn model_with_index(root: &Path, file: &str) -> PathBuf {
    let dir = root.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": {"t": file}});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    dir
}

fn weight_files_err(dir: PathBuf) -> String {
    let shown = dir.display().to_string();
    match bounded(&format!("weight_files({shown})"), move || {
        weight_files(&dir)
    }) {
        Ok(files) => panic!("{shown}: the hostile index was accepted: {files:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn escaping_weight_map_entries_name_the_index_and_the_entry() {
    for file in [
        "/etc/passwd",
        "../outside.safetensors",
        "sub/../../outside.safetensors",
    ] {
        let root = tempfile::tempdir().unwrap();
        // The file outside exists, so only confinement can refuse it.
        std::fs::write(root.path().join("outside.safetensors"), b"outside").unwrap();
        let dir = model_with_index(root.path(), file);
        let err = weight_files_err(dir.clone());
        let index = dir.join("model.safetensors.index.json");
        for needle in [
            index.display().to_string(),
            "weight_map entry `t`".to_string(),
            format!("`{file}` is not a relative path inside"),
        ] {
            assert!(err.contains(&needle), "`{needle}` not in: {err}");
        }
    }
}

#[test]
fn a_fifo_shard_is_refused_without_blocking() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_with_index(root.path(), "model-00001-of-00001.safetensors");
    let shard = dir.join("model-00001-of-00001.safetensors");
    mkfifo(&shard);
    let err = weight_files_err(dir.clone());
    for needle in [
        "model.safetensors.index.json",
        "weight_map entry `t`",
        "model-00001-of-00001.safetensors",
        "not a regular file (a FIFO)",
    ] {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
    // Mapping it directly (a caller that skips the index) is refused too.
    let mapped = bounded("MappedFile::open(FIFO)", move || {
        MappedFile::open(&shard).err().map(|e| e.to_string())
    });
    let err = mapped.expect("a FIFO was mapped");
    assert!(err.contains("not a regular file (a FIFO)"), "{err}");
}

#[test]
fn an_index_that_is_a_fifo_is_refused_without_blocking() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    mkfifo(&dir.join("model.safetensors.index.json"));
    let err = weight_files_err(dir);
    assert!(
        err.contains("model.safetensors.index.json") && err.contains("a FIFO"),
        "{err}"
    );
}

#[test]
fn a_refused_entry_is_a_typed_error() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_with_index(root.path(), "/etc/passwd");
    let err = weight_files(&dir).unwrap_err();
    assert!(
        matches!(err, ModelError::WeightMapEntry { ref entry, .. } if entry == "t"),
        "{err:?}"
    );
}

#[test]
fn a_sane_index_still_lists_its_shards_once() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for f in [
        "model-00001-of-00002.safetensors",
        "sub/model-00002-of-00002.safetensors",
    ] {
        std::fs::write(dir.join(f), b"x").unwrap();
    }
    let index = serde_json::json!({"weight_map": {
        "a": "model-00001-of-00002.safetensors",
        "b": "./sub/model-00002-of-00002.safetensors",
        "c": "model-00001-of-00002.safetensors",
    }});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let files = weight_files(&dir).unwrap();
    assert_eq!(
        files,
        vec![
            dir.join("model-00001-of-00002.safetensors"),
            dir.join("./sub/model-00002-of-00002.safetensors"),
        ]
    );
}
