//! Shared by the integration tests: the repository layout, the Python reference interpreter, the
//! jobs to render and the plans they are rendered with (constructed here, not by the planner, so
//! these tests pin the renderer alone).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use lf_api::{FineTuneJob, MemoryBreakdown, Plan};
use lf_render::RenderContext;

/// The UID the golden renders give each FineTuneJob (the API server assigns the real one).
pub const GOLDEN_UID: &str = "00000000-0000-4000-8000-000000000001";
/// The trainer image of the golden renders.
pub const GOLDEN_IMAGE: &str = "ghcr.io/lf-operator/lf-operator:0.1.0";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root exists")
}

/// `$LF_PYTHON`, or the repository's `.venv/bin/python`; panics with the fix when missing.
pub fn python() -> PathBuf {
    let path = std::env::var_os("LF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    assert!(
        path.exists(),
        "the Python reference stack is missing: {} does not exist (run scripts/install-python-ref.sh or set LF_PYTHON)",
        path.display()
    );
    path
}

/// Runs a command and panics with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// A job to render: where it comes from and the plan it is rendered with.
pub struct Case {
    pub name: String,
    pub source: PathBuf,
    pub golden: PathBuf,
    pub job: FineTuneJob,
    pub plan: Plan,
}

/// `(gpus, nodes, gpus_per_node, zero_stage, offload, micro_batch, accumulation)` per job, as the
/// planner chose them (examples/golden/*.plan.txt) or as the fixture needs them.
fn plan_shape(name: &str) -> Option<(u32, u32, u32, u8, bool, u32, u32)> {
    Some(match name {
        "codellama-34b-lora-r128-4k" => (2, 1, 2, 3, false, 4, 4),
        "llama2-70b-lora-4x8-a100" => (3, 1, 3, 3, false, 2, 11),
        "llama3-8b-full-zero3" => (4, 1, 4, 3, false, 4, 2),
        "llama3-8b-lora-24gb" => (1, 1, 1, 0, false, 2, 8),
        "llama3-8b-qlora" => (1, 1, 1, 0, false, 2, 8),
        "qwen3-8b-lora-24gb" => (1, 1, 1, 0, false, 2, 8),
        "llama3-8b-dpo-lora-24gb" => (1, 1, 1, 0, false, 1, 16),
        "llama3-8b-rm-lora-24gb" => (1, 1, 1, 0, false, 2, 8),
        "gemma3-12b-qlora" => (1, 1, 1, 0, false, 4, 4),
        "mixtral-8x7b-qlora" => (2, 1, 2, 3, false, 2, 2),
        "llama31-8b-qlora-64k" => (1, 1, 1, 0, false, 1, 8),
        "quickstart" => (1, 1, 1, 0, false, 8, 1),
        "quickstart-dpo" => (1, 1, 1, 0, false, 8, 1),
        // Fixtures of this crate.
        "multinode-kueue" => (16, 2, 8, 3, true, 1, 16),
        "minimal" => (1, 1, 1, 0, false, 8, 1),
        _ => return None,
    })
}

/// The plan a job is rendered with.
pub fn plan_for(name: &str, job: &FineTuneJob) -> Plan {
    let (gpus, nodes, gpus_per_node, zero_stage, offload, micro, accum) = plan_shape(name)
        .unwrap_or_else(|| {
            panic!("no plan for `{name}`: add its shape to plan_shape() in tests/common/mod.rs")
        });
    let gpu_memory_bytes = job.spec.resources.gpu_memory_bytes();
    Plan {
        model_params: 0,
        trainable_params: 0,
        gpus,
        nodes,
        gpus_per_node,
        zero_stage,
        offload_optimizer: offload,
        micro_batch_size: micro,
        gradient_accumulation_steps: accum,
        gpu_memory_bytes,
        headroom_bytes: (gpu_memory_bytes as f64 * job.spec.resources.headroom()) as u64,
        fits: true,
        per_gpu: MemoryBreakdown::default(),
        // A constructed figure (the planner's is tested in lf-planner): 6 GiB per process.
        host_memory_bytes: 6 << 30,
        checkpoint_bytes: 2 << 30,
        // Constructed too: under `gradient_checkpointing: auto` the config gets `recompute_layers`.
        recomputation: Some(lf_api::Recomputation {
            recomputed: 20,
            layers: 32,
            // As the planner chose for the long-context example (checkpoints in host memory).
            offloaded: name == "llama31-8b-qlora-64k",
        }),
        summary: "constructed by lf-render's tests".into(),
    }
}

/// The context of the golden renders: attempt 1, no explicit checkpoint, sidecars off.
pub fn golden_context() -> RenderContext {
    RenderContext {
        default_image: GOLDEN_IMAGE.into(),
        attempt: 1,
        resume_from: None,
        sidecar_injection_default: false,
        // Prometheus in a `monitoring` namespace may scrape the trainers.
        metrics_from: vec![serde_json::from_value(serde_json::json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
        }))
        .expect("a NetworkPolicyPeer")],
    }
}

fn load(path: &Path) -> FineTuneJob {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut job =
        FineTuneJob::from_yaml_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    job.metadata
        .uid
        .get_or_insert_with(|| GOLDEN_UID.to_string());
    job
}

fn cases_in(dir: &Path, golden_dir: &Path) -> Vec<Case> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml")
                && !p.to_string_lossy().ends_with(".rendered.yaml")
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|source| {
            let name = source
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let job = load(&source);
            let plan = plan_for(&name, &job);
            let golden = golden_dir.join(format!("{name}.rendered.yaml"));
            Case {
                name,
                source,
                golden,
                job,
                plan,
            }
        })
        .collect()
}

/// Every `examples/*.yaml` (goldens in `examples/golden/`) and every fixture of this crate
/// (`tests/fixtures/*.yaml`, goldens beside them).
pub fn all_cases() -> Vec<Case> {
    let root = repo_root();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut cases = cases_in(&root.join("examples"), &root.join("examples/golden"));
    cases.extend(cases_in(&fixtures, &fixtures));
    cases
}

/// One fixture by name.
pub fn fixture(name: &str) -> Case {
    all_cases()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no fixture `{name}`"))
}
