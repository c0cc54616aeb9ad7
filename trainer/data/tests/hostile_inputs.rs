//! Hostile model and data files: chat templates that loop, flood or do not parse,
//! `dataset_info.json` names that leave `dataset_dir` or name a FIFO, a corrupt token cache. Each
//! must end in one clear line naming the file (an input error: the trainer exits 2), within a
//! time bound, without a panic and without asking for unbounded memory.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use lf_api::training::TrainingConfig;
use lf_data::template::jinja::{JinjaTemplate, RenderVars, FUEL, MAX_OUTPUT_BYTES};
use lf_data::{load_tokenizer, prepare, DataContext, DataError, PreparedData};

/// Generous: a DoS guard, not a speed target (each case takes milliseconds).
const BOUND: Duration = Duration::from_secs(5);

fn render_err(source: &str) -> String {
    let start = Instant::now();
    let result = JinjaTemplate::compile(source)
        .and_then(|t| t.render(&[("user", "hi")], true, &RenderVars::default()));
    let took = start.elapsed();
    assert!(took < BOUND, "{source}: took {took:?}");
    let err = result.expect_err(source);
    assert!(err.is_input_error(), "{err:?}");
    let text = err.to_string();
    assert!(!text.contains('\n'), "one line: {text}");
    text
}

#[test]
fn a_looping_template_runs_out_of_fuel() {
    let err = render_err(
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
    );
    assert!(
        err.contains("chat template") && err.contains(&FUEL.to_string()),
        "{err}"
    );
    // Without output: the loop itself is metered.
    let err = render_err(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% set x = i %}{% endfor %}{% endfor %}",
    );
    assert!(err.contains("fuel"), "{err}");
}

#[test]
fn a_flooding_template_is_cut_off() {
    // 1 GB of output, in 10 MB pieces and as one string.
    for source in [
        "{% for i in range(100) %}{{ 'x' * 10000000 }}{% endfor %}",
        "{{ 'x' * 1000000000 }}",
        "{{ messages | tojson(indent=1000000000) }}",
    ] {
        let err = render_err(source);
        assert!(
            err.contains(&format!("exceeds {} MiB", MAX_OUTPUT_BYTES >> 20))
                || err.contains("fuel")
                || err.contains("too large")
                || err.contains("indent is at most"),
            "{source}: {err}"
        );
    }
}

#[test]
fn a_malformed_tag_is_a_syntax_error_not_a_panic() {
    for source in ["{%}", "{%-}", "a{%}b{% generation %}", "{%%}"] {
        let err = render_err(source);
        assert!(err.starts_with("chat template `auto`"), "{err}");
    }
}

struct Data {
    dir: tempfile::TempDir,
}

impl Data {
    fn new(info: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_char_tokenizer(&dir.path().join("model"), serde_json::json!({}));
        write(&dir.path().join("data/dataset_info.json"), info);
        write(
            &dir.path().join("data/ok.json"),
            r#"[{"instruction": "a", "output": "b"}]"#,
        );
        Data { dir }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, dataset: &str) -> Result<PreparedData, DataError> {
        let mut cfg =
            TrainingConfig::from_yaml_str(&format!("dataset: {dataset}\ntemplate: chatml"))
                .unwrap();
        cfg.dataset_dir = self.path("data").display().to_string();
        let tok = load_tokenizer(&self.path("model")).unwrap();
        let ctx = DataContext {
            rank: 0,
            world_size: 1,
            cache_dir: self.path("cache"),
        };
        prepare(&cfg, &tok, &ctx)
    }
}

fn fails<T>(result: Result<T, DataError>) -> DataError {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn prepare_err(data: &Data, dataset: &str) -> String {
    let start = Instant::now();
    let err = fails(data.run(dataset));
    assert!(start.elapsed() < BOUND);
    assert!(err.is_input_error(), "{err:?}");
    let text = err.to_string();
    assert!(!text.contains('\n'), "one line: {text}");
    text
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn dataset_info_names_stay_in_dataset_dir() {
    let d = Data::new(
        r#"{"abs": {"file_name": "/etc/passwd"}, "up": {"file_name": "../model/tokenizer.json"},
            "deep": {"file_name": "sub/../../x.json"}, "fifo": {"file_name": "pipe.json"}}"#,
    );
    for name in ["abs", "up", "deep"] {
        let err = prepare_err(&d, name);
        assert!(
            err.contains("dataset_info.json") && err.contains("not a relative path inside"),
            "{name}: {err}"
        );
    }
    // A dataset name without an entry is joined to dataset_dir the same way.
    let err = prepare_err(&d, "../model/tokenizer");
    assert!(err.contains("not a relative path inside"), "{err}");
    // A FIFO in place of a data file is never opened (open would block forever).
    mkfifo(&d.path("data/pipe.json"));
    let err = prepare_err(&d, "fifo");
    assert!(
        err.contains("pipe.json: not a regular file (a FIFO)"),
        "{err}"
    );
    assert!(d.run("ok").is_ok());
}

#[test]
fn a_fifo_as_dataset_info_or_tokenizer_file_is_refused() {
    let d = Data::new("{}");
    std::fs::remove_file(d.path("data/dataset_info.json")).unwrap();
    mkfifo(&d.path("data/dataset_info.json"));
    let err = prepare_err(&d, "ok");
    assert!(
        err.contains("dataset_info.json") && err.contains("a FIFO"),
        "{err}"
    );

    mkfifo(&d.path("model/chat_template.jinja"));
    let start = Instant::now();
    let err = fails(load_tokenizer(&d.path("model")));
    assert!(start.elapsed() < BOUND);
    assert!(err.is_input_error());
    assert!(
        err.to_string()
            .contains("chat_template.jinja: not a regular file (a FIFO)"),
        "{err}"
    );
}

#[test]
fn a_corrupt_cache_count_is_refused_before_allocating() {
    let d = Data::new("{}");
    d.run("ok").unwrap();
    let cache = std::fs::read_dir(d.path("cache"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "lfdata"))
        .expect("a cache file");
    let mut bytes = std::fs::read(&cache).unwrap();
    let header_len = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let count_at = 16 + header_len;
    // A count that fits under the file size (the old bound) but not in what is left of the file:
    // before, `with_capacity` asked for count × 48 bytes.
    for count in [
        u64::MAX,
        bytes.len() as u64,
        (bytes.len() - count_at) as u64 / 4 + 1,
    ] {
        bytes[count_at..count_at + 8].copy_from_slice(&count.to_le_bytes());
        std::fs::write(&cache, &bytes).unwrap();
        let start = Instant::now();
        let err = fails(lf_data::cache::read(&cache));
        assert!(start.elapsed() < BOUND);
        let text = err.to_string();
        assert!(
            text.contains(&cache.display().to_string()) && text.contains("example count"),
            "{text}"
        );
    }
}
