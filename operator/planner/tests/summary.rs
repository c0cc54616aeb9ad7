//! The one-line summary of a plan (`…; weights 15.1 GiB dominate`) names the largest row of the
//! per-GPU breakdown the table prints, overhead included: the quick start's tiny model is
//! dominated by the CUDA context, not by its activations.

use std::path::{Path, PathBuf};

use lf_api::{FineTuneJob, MemoryBreakdown, Plan};
use lf_planner::{format_gib, search, PlannerInput};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn plan_example(name: &str) -> lf_planner::PlanSearch {
    let path = repo_root().join("examples").join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let job = FineTuneJob::from_yaml_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    search(&PlannerInput::from_job(&job).unwrap_or_else(|e| panic!("{name}: {e}")))
}

/// The rows of the table, in its order.
fn rows(b: &MemoryBreakdown) -> Vec<(&'static str, u64)> {
    vec![
        ("weights", b.weights_bytes),
        ("gradients", b.gradients_bytes),
        ("optimizer states", b.optimizer_bytes),
        ("activations", b.activations_bytes),
        ("logits / loss", b.logits_bytes),
        ("buffers", b.buffers_bytes),
        ("overhead", b.overhead_bytes),
    ]
}

/// What the summary says dominates: (row, GiB as printed).
fn named(plan: &Plan) -> (String, String) {
    let tail = plan
        .summary
        .rsplit("; ")
        .next()
        .and_then(|t| t.strip_suffix(" dominate"))
        .unwrap_or_else(|| panic!("no `; … dominate` in {:?}", plan.summary));
    let (row, gib) = tail
        .rsplit_once(' ')
        .and_then(|(rest, unit)| {
            let (row, number) = rest.rsplit_once(' ')?;
            Some((row.to_string(), format!("{number} {unit}")))
        })
        .unwrap_or_else(|| panic!("cannot read {tail:?}"));
    (row, gib)
}

#[test]
fn quick_start_summary_names_the_overhead() {
    let result = plan_example("quickstart");
    let plan = result.chosen.expect("the quick start fits");
    let b = &plan.per_gpu;
    assert!(
        b.overhead_bytes > b.activations_bytes,
        "premise: the CUDA context outweighs a 1M-parameter model's activations: {b:?}"
    );
    let (row, gib) = named(&plan);
    assert_eq!(row, "overhead", "{}", plan.summary);
    assert_eq!(gib, format_gib(b.overhead_bytes), "{}", plan.summary);
}

#[test]
fn every_summary_names_the_largest_row() {
    for name in [
        "quickstart",
        "llama3-8b-lora-24gb",
        "llama3-8b-qlora",
        "llama2-70b-lora-4x8-a100",
        "codellama-34b-lora-r128-4k",
        "llama3-8b-full-zero3",
        "qwen3-8b-lora-24gb",
        "gemma3-12b-qlora",
        "mixtral-8x7b-qlora",
        "llama31-8b-qlora-64k",
    ] {
        for option in plan_example(name).options {
            let plan = &option.plan;
            let largest = rows(&plan.per_gpu)
                .into_iter()
                .map(|(_, bytes)| bytes)
                .max()
                .unwrap();
            let (row, gib) = named(plan);
            let bytes = rows(&plan.per_gpu)
                .into_iter()
                .find(|(r, _)| *r == row)
                .unwrap_or_else(|| panic!("{name}: {row:?} is not a row of the table"))
                .1;
            assert_eq!(bytes, largest, "{name}: {}", plan.summary);
            assert_eq!(gib, format_gib(bytes), "{name}: {}", plan.summary);
        }
    }
}
