//! The planner's work is bounded whatever a tenant writes: `maxGpus: 4294967295` with
//! `gpusPerNode: 1` is refused (from a FineTuneJob) or searched (given directly) in well under a
//! second, with a short candidate list and no overflow. The 1 s bounds are a denial-of-service
//! guard for the operator, not speed targets (a 70B search takes milliseconds).

use std::time::{Duration, Instant};

use lf_api::crd::{MAX_GPUS, MAX_GPUS_PER_NODE};
use lf_api::training::TrainingConfig;
use lf_api::{FineTuneJob, Plan};
use lf_planner::{preset, replan_after_oom, search, PlanError, PlannerInput};

const GIB: u64 = 1 << 30;
const GUARD: Duration = Duration::from_secs(1);

fn input(gib: u64, per_node: u32, max: u32) -> PlannerInput {
    let model = "meta-llama/Meta-Llama-3-70B";
    let training = TrainingConfig::from_yaml_str(
        "bf16: true\nfinetuning_type: full\nper_device_train_batch_size: 1024",
    )
    .unwrap();
    PlannerInput {
        gpus_per_node: per_node,
        max_gpus: max,
        ..PlannerInput::new(model, preset(model).unwrap(), training, gib * GIB)
    }
}

#[test]
fn candidates_are_few_increasing_and_end_at_the_largest_count() {
    for (per_node, max) in [
        (1, u32::MAX),
        (u32::MAX, u32::MAX),
        (7, u32::MAX),
        (1, MAX_GPUS),
        (8, 20),
        (8, 8),
        (1, 1),
        (MAX_GPUS_PER_NODE, MAX_GPUS),
    ] {
        let i = input(80, per_node, max);
        let c = i.gpu_candidates();
        assert!(c.len() <= 400, "{per_node}/{max}: {} candidates", c.len());
        assert!(c.windows(2).all(|w| w[0] < w[1]), "{per_node}/{max}: {c:?}");
        assert!(c.iter().all(|n| *n <= max), "{per_node}/{max}");
        let whole_nodes = c.iter().filter(|n| **n > per_node);
        assert!(whole_nodes.clone().all(|n| n % per_node == 0));
        // Whole nodes: every count up to 16 nodes, then steps of at most 12.5%.
        let nodes: Vec<u64> = whole_nodes.map(|n| u64::from(n / per_node)).collect();
        for w in nodes.windows(2) {
            assert!(
                w[1] == w[0] + 1 || (w[0] >= 16 && w[1] * 8 <= w[0] * 9),
                "{w:?}"
            );
        }
        // Within a node: every count a CRD allows (up to 64), then the same steps.
        let in_node: Vec<u64> = c
            .iter()
            .filter(|n| **n <= per_node)
            .map(|n| u64::from(*n))
            .collect();
        assert_eq!(in_node.last().copied(), Some(u64::from(per_node.min(max))));
        for w in in_node.windows(2) {
            assert!(
                w[1] == w[0] + 1 || (w[0] >= 64 && w[1] * 8 <= w[0] * 9),
                "{w:?}"
            );
        }
        let max_nodes = max / per_node.max(1);
        if max_nodes >= 2 {
            assert_eq!(c.last().copied(), Some(max_nodes * per_node));
        }
    }
    // Small jobs keep every whole-node count, as before.
    assert_eq!(
        input(80, 8, 40).gpu_candidates(),
        [1, 2, 3, 4, 5, 6, 7, 8, 16, 24, 32, 40]
    );
}

#[test]
fn a_search_over_u32_max_gpus_is_bounded() {
    // 1 GiB GPUs: nothing fits, so every candidate is tried (the worst case).
    for gib in [1, 80] {
        let i = input(gib, 1, u32::MAX);
        let start = Instant::now();
        let r = search(&i);
        let took = start.elapsed();
        assert!(took < GUARD, "{gib} GiB: search took {took:?}");
        assert!(r.options.len() < 20_000, "{} options", r.options.len());
    }
}

#[test]
fn a_replan_over_u32_max_gpus_is_bounded() {
    let i = input(1, 1, u32::MAX);
    let previous: Plan = lf_planner::evaluate(&i, 1, 0, false, 1024);
    let start = Instant::now();
    let r = replan_after_oom(&i, &previous, Some(previous.per_gpu.peak_bytes * 2));
    let took = start.elapsed();
    assert!(took < GUARD, "replan took {took:?}");
    assert!(r.options.len() < 100_000, "{} options", r.options.len());
}

fn job(resources: &str) -> FineTuneJob {
    FineTuneJob::from_yaml_str(&format!(
        r#"
apiVersion: lf-operator.io/v1alpha1
kind: FineTuneJob
metadata: {{name: huge}}
spec:
  model: {{name: meta-llama/Meta-Llama-3-8B}}
  data: {{source: {{claimName: data}}}}
  output: {{claimName: out}}
  resources: {{gpuMemoryGib: 80, {resources}}}
"#
    ))
    .unwrap()
}

#[test]
fn a_job_over_the_limits_is_refused_in_microseconds() {
    for (resources, key, value) in [
        (
            "maxGpus: 4294967295, gpusPerNode: 1",
            "spec.resources.maxGpus",
            "4294967295",
        ),
        (
            "maxGpus: 4097, gpusPerNode: 1",
            "spec.resources.maxGpus",
            "4097",
        ),
        (
            "maxGpus: 4096, gpusPerNode: 65",
            "spec.resources.gpusPerNode",
            "65",
        ),
        ("gpus: 8192, gpusPerNode: 8", "spec.resources.gpus", "8192"),
    ] {
        let start = Instant::now();
        let err = PlannerInput::from_job(&job(resources)).unwrap_err();
        assert!(start.elapsed() < GUARD);
        match &err {
            PlanError::InvalidInput { key: k, .. } => assert_eq!(k, key, "{resources}"),
            other => panic!("{resources}: {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(value) && text.contains("limit"), "{text}");
    }
    // At the limits, the job plans.
    let input = PlannerInput::from_job(&job("maxGpus: 4096, gpusPerNode: 64")).unwrap();
    let start = Instant::now();
    let r = search(&input);
    assert!(start.elapsed() < GUARD);
    assert!(r.chosen.is_some());
}
