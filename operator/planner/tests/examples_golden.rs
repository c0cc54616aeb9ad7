//! The FineTuneJob examples in `examples/` parse, plan, and print exactly their committed table
//! (`examples/golden/<name>.plan.txt`). Regenerate with `UPDATE_GOLDEN=1 cargo test -p lf-planner
//! --test examples_golden` after an intended change, and read the diff.

use std::path::{Path, PathBuf};

use lf_api::FineTuneJob;
use lf_planner::{format_table, search, PlannerInput};

const EXAMPLES: &[&str] = &[
    "llama3-8b-lora-24gb",
    "llama3-8b-qlora",
    "llama2-70b-lora-4x8-a100",
    "codellama-34b-lora-r128-4k",
    "llama3-8b-full-zero3",
    "qwen3-8b-lora-24gb",
    "llama3-8b-dpo-lora-24gb",
    "llama3-8b-rm-lora-24gb",
    "gemma3-12b-qlora",
    "mixtral-8x7b-qlora",
    "llama31-8b-qlora-64k",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load(name: &str) -> FineTuneJob {
    let path = repo_root().join("examples").join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    FineTuneJob::from_yaml_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn examples_parse_plan_and_match_golden_tables() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for name in EXAMPLES {
        let job = load(name);
        let input = PlannerInput::from_job(&job).unwrap_or_else(|e| panic!("{name}: {e}"));
        let result = search(&input);
        assert!(
            result.chosen.is_some(),
            "{name}: {}",
            result.failure_message().unwrap_or_default()
        );
        let table = format_table(&result);
        let golden = repo_root()
            .join("examples/golden")
            .join(format!("{name}.plan.txt"));
        if update {
            std::fs::write(&golden, &table).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
                golden.display()
            )
        });
        if expected != table {
            mismatches.push(format!(
                "{name}:\n--- expected\n{expected}\n--- got\n{table}"
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "plans differ from examples/golden (UPDATE_GOLDEN=1 regenerates):\n{}",
        mismatches.join("\n")
    );
}
