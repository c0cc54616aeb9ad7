//! Hostile data and template files through the `lf-trainer` binary: each ends with exit code 2
//! (a configuration/input error, not retried) and one `error:` line naming the file, within a
//! time limit (a FIFO or a looping template used to hang the trainer).

use std::path::{Path, PathBuf};
use std::process::Command;

mod tiny_run;

use tiny_run::{assets, run_bounded, write_config};

fn assert_input_error(args: &[&str], needles: &[&str]) {
    let (code, err) = run_bounded(args);
    assert_eq!(code, Some(2), "{args:?}:\n{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{args:?}: one error line expected:\n{err}");
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` not in: {}", lines[0]);
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// A copy of the tiny model directory (so a test can add files to it).
fn model_copy(dir: &Path) -> PathBuf {
    let to = dir.join("model");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(assets().join("model")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    to
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

#[test]
fn hostile_dataset_info_names_are_input_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("dataset_info.json"),
        r#"{"abs": {"file_name": "/etc/passwd"}, "up": {"file_name": "../secret.json"},
            "fifo": {"file_name": "pipe.json"}}"#,
    )
    .unwrap();
    mkfifo(&data.join("pipe.json"));
    let c = cfg.to_str().unwrap();
    let dataset_dir = format!("dataset_dir={}", data.display());
    for (name, needles) in [
        ("abs", vec!["/etc/passwd", "not a relative path inside"]),
        ("up", vec!["../secret.json", "not a relative path inside"]),
        ("fifo", vec!["pipe.json", "not a regular file (a FIFO)"]),
    ] {
        let dataset = format!("dataset={name}");
        assert_input_error(&["train", c, &dataset_dir, &dataset], &needles);
    }
}

#[test]
fn hostile_chat_templates_are_input_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    let cfg = write_config(dir.path(), "");
    let c = cfg.to_str().unwrap();
    let model_arg = format!("model_name_or_path={}", model.display());
    for (template, needle) in [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
            "minijinja fuel",
        ),
        ("{% for i in range(100) %}{{ 'x' * 10000000 }}{% endfor %}", "exceeds 16 MiB"),
        ("{%}", "syntax error"),
    ] {
        std::fs::write(model.join("chat_template.jinja"), template).unwrap();
        assert_input_error(
            &["train", c, &model_arg, "template=auto"],
            &["chat template", needle],
        );
    }
    std::fs::remove_file(model.join("chat_template.jinja")).unwrap();
    mkfifo(&model.join("chat_template.jinja"));
    assert_input_error(
        &["train", c, &model_arg, "template=auto"],
        &["chat_template.jinja", "not a regular file (a FIFO)"],
    );
}
