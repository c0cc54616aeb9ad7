//! What the rendered objects must say, property by property (the goldens pin the exact text).

mod common;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
use lf_api::runtime::{env, exit_code, paths};
use lf_api::{FineTuneJob, Plan, TrainingConfig};
use lf_render::{
    render, trainer_config, RenderContext, RenderError, Rendered, LABEL_ATTEMPT, LABEL_JOB_NAME,
};

use common::{fixture, golden_context};

fn rendered(name: &str) -> (FineTuneJob, Plan, Rendered) {
    let case = fixture(name);
    let r = render(&case.job, &case.plan, &golden_context()).expect("renders");
    (case.job, case.plan, r)
}

fn pod_spec(r: &Rendered) -> &PodSpec {
    r.job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod spec")
}

fn container(r: &Rendered) -> &Container {
    &pod_spec(r).containers[0]
}

fn env_map(vars: &[EnvVar]) -> BTreeMap<&str, Option<&str>> {
    vars.iter()
        .map(|v| (v.name.as_str(), v.value.as_deref()))
        .collect()
}

#[test]
fn the_network_policy_admits_the_job_itself_and_the_configured_scrapers() {
    let (job, plan, r) = rendered("multinode-kueue");
    let np = serde_json::to_value(&r.network_policy).expect("json");
    let own = serde_json::json!({"matchLabels": {
        LABEL_JOB_NAME: "llama3-70b-sft", "app.kubernetes.io/component": "trainer"}});
    assert_eq!(np["spec"]["podSelector"], own);
    assert_eq!(
        np["spec"]["policyTypes"],
        serde_json::json!(["Ingress"]),
        "egress stays open"
    );
    let ingress = np["spec"]["ingress"].as_array().expect("rules");
    // All ports between the job's own pods (c10d store, NCCL/Gloo data ports chosen at run time).
    assert_eq!(
        ingress[0],
        serde_json::json!({"from": [{"podSelector": own}]})
    );
    // The metrics port from the configured peers (common::golden_context: `monitoring`).
    assert_eq!(
        ingress[1]["ports"],
        serde_json::json!([{"port": 9400, "protocol": "TCP"}])
    );
    assert_eq!(
        ingress[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    // Another job's pods are not selected (its label value differs).
    assert_eq!(
        np["metadata"]["name"],
        format!(
            "{}-trainer",
            job.metadata.name.as_deref().unwrap_or_default()
        )
    );
    let mut ctx = golden_context();
    ctx.metrics_from.clear();
    let bare = render(&job, &plan, &ctx).expect("render");
    assert_eq!(
        bare.network_policy
            .spec
            .and_then(|s| s.ingress)
            .map(|i| i.len()),
        Some(1),
        "no scrapers configured: the job's own pods only"
    );
}

#[test]
fn every_object_is_owned_and_labelled() {
    let (job, _, r) = rendered("multinode-kueue");
    let objects = r.objects();
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Service",
            "NetworkPolicy",
            "Job"
        ]
    );
    for o in &objects {
        let meta = &o["metadata"];
        let owner = &meta["ownerReferences"][0];
        assert_eq!(owner["kind"], "FineTuneJob", "{o}");
        assert_eq!(owner["apiVersion"], "lf-operator.io/v1alpha1");
        assert_eq!(owner["uid"].as_str(), job.metadata.uid.as_deref());
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["blockOwnerDeletion"], true);
        assert_eq!(meta["namespace"], "ml-team");
        let labels = &meta["labels"];
        for key in ["name", "instance", "component", "managed-by", "part-of"] {
            assert!(
                labels[format!("app.kubernetes.io/{key}")].is_string(),
                "{key} missing on {}",
                o["kind"]
            );
        }
        assert_eq!(labels[LABEL_JOB_NAME], "llama3-70b-sft");
        assert!(meta["name"].as_str().is_some_and(|n| n.len() <= 63));
    }
    assert_eq!(
        r.job
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_ATTEMPT))
            .map(String::as_str),
        Some("1")
    );
}

#[test]
fn a_job_without_uid_renders_without_owner_references() {
    let mut case = fixture("minimal");
    case.job.metadata.uid = None;
    let r = render(&case.job, &case.plan, &golden_context()).expect("renders");
    for o in r.objects() {
        assert!(o["metadata"]["ownerReferences"].is_null(), "{o}");
        assert_eq!(o["metadata"]["namespace"], "default");
    }
}

#[test]
fn config_map_holds_the_trainer_config_and_parses_back() {
    for name in ["multinode-kueue", "minimal"] {
        let case = fixture(name);
        let ctx = golden_context();
        let r = render(&case.job, &case.plan, &ctx).expect("renders");
        let text = &r.config_map.data.as_ref().expect("data")["train.yaml"];
        let parsed =
            TrainingConfig::from_yaml_str(text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        assert_eq!(
            parsed,
            trainer_config(&case.job, &case.plan, &ctx).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn trainer_config_carries_the_plan_and_the_pod_paths() {
    let case = fixture("multinode-kueue");
    let mut ctx = golden_context();
    let c = trainer_config(&case.job, &case.plan, &ctx).unwrap();
    assert_eq!(c.zero_stage, 3);
    assert_eq!(c.offload_optimizer, lf_api::training::OffloadDevice::Cpu);
    assert_eq!(
        c.per_device_train_batch_size,
        case.plan.micro_batch_size as usize
    );
    assert_eq!(
        c.gradient_accumulation_steps,
        case.plan.gradient_accumulation_steps as usize
    );
    assert_eq!(c.model_name_or_path.as_deref(), Some(paths::MODEL_DIR));
    assert_eq!(c.dataset_dir, paths::DATA_DIR);
    assert_eq!(c.output_dir.as_deref(), Some(paths::OUTPUT_DIR));
    assert_eq!(
        c.dataset_format,
        Some(lf_api::training::DatasetFormat::Sharegpt)
    );
    assert_eq!((c.save_steps, c.save_total_limit), (100, Some(2)));
    assert_eq!(c.resume_from_checkpoint.as_deref(), Some("auto"));
    // The user's own settings survive.
    assert_eq!((c.lora_rank, c.cutoff_len, c.bf16), (16, 4096, true));

    ctx.resume_from = Some("/output/checkpoint-300".into());
    let c = trainer_config(&case.job, &case.plan, &ctx).unwrap();
    assert_eq!(
        c.resume_from_checkpoint.as_deref(),
        Some("/output/checkpoint-300")
    );

    // Without spec.checkpointing the training section's own values stay.
    let minimal = fixture("minimal");
    let c = trainer_config(&minimal.job, &minimal.plan, &golden_context()).unwrap();
    assert_eq!((c.save_steps, c.save_total_limit), (500, None));
}

#[test]
fn a_deepspeed_object_is_applied_and_not_rendered() {
    let mut case = fixture("minimal");
    case.job.spec.training.deepspeed = serde_yaml::from_str(
        "{zero_optimization: {stage: 3}, gradient_clipping: 0.5, train_micro_batch_size_per_gpu: auto}",
    )
    .unwrap();
    let c = trainer_config(&case.job, &case.plan, &golden_context()).unwrap();
    assert!(
        c.deepspeed.is_none(),
        "the pods get the mapped keys, not the object"
    );
    assert_eq!(c.max_grad_norm, 0.5);
    // The plan has the last word on what it decides.
    assert_eq!(c.zero_stage, case.plan.zero_stage);
    assert_eq!(
        c.per_device_train_batch_size,
        case.plan.micro_batch_size as usize
    );
    // What the trainer cannot honour is an error, not a silently dropped setting.
    case.job.spec.training.deepspeed =
        serde_yaml::from_str("{zero_optimization: {stage: 3, offload_param: {device: nvme}}}")
            .unwrap();
    let err = trainer_config(&case.job, &case.plan, &golden_context()).unwrap_err();
    assert!(err.to_string().contains("offload_param"), "{err}");
}

#[test]
fn environment_follows_the_runtime_contract() {
    let (_, plan, r) = rendered("multinode-kueue");
    let vars = container(&r).env.as_ref().expect("env");
    let m = env_map(vars);
    assert_eq!(
        m[env::MASTER_ADDR],
        Some("llama3-70b-sft-1-0.llama3-70b-sft")
    );
    assert_eq!(m[env::MASTER_PORT], Some("23456"));
    assert_eq!(m[env::WORLD_SIZE], Some("16"));
    assert_eq!(m[env::NNODES], Some("2"));
    assert_eq!(m[env::NPROC_PER_NODE], Some("8"));
    assert_eq!(m[env::JOB_NAME], Some("llama3-70b-sft"));
    assert_eq!(m[env::ATTEMPT], Some("1"));
    assert_eq!(m[env::CONFIG], Some(paths::CONFIG_FILE));
    let rank = vars
        .iter()
        .find(|v| v.name == env::NODE_RANK)
        .expect("NODE_RANK");
    let field = rank
        .value_from
        .as_ref()
        .and_then(|f| f.field_ref.as_ref())
        .expect("a fieldRef");
    assert_eq!(
        field.field_path,
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    );
    // NCCL: defaults, the user's override wins, the user's extra variable is added.
    assert_eq!(m["NCCL_DEBUG"], Some("INFO"));
    assert_eq!(m["NCCL_IB_HCA"], Some("mlx5"));
    assert_eq!(m["TORCH_NCCL_ASYNC_ERROR_HANDLING"], Some("1"));
    assert!(!m.contains_key("NCCL_SOCKET_IFNAME"));
    assert_eq!(
        lf_render::worker_env(&fixture("multinode-kueue").job, &plan, &golden_context()),
        *vars
    );
    // No name twice.
    assert_eq!(m.len(), vars.len());

    let (_, _, minimal) = rendered("minimal");
    let m = env_map(container(&minimal).env.as_ref().expect("env"));
    assert_eq!(m["NCCL_DEBUG"], Some("WARN"));
    assert_eq!(m[env::MASTER_PORT], Some("29500"));
}

#[test]
fn reserved_or_malformed_nccl_variables_are_rejected() {
    for (key, needle) in [
        ("MASTER_ADDR", "operator sets"),
        ("HOME", "operator sets"),
        ("1BAD", "environment variable name"),
    ] {
        let mut case = fixture("minimal");
        case.job
            .spec
            .distributed
            .nccl
            .insert(key.into(), "x".into());
        let err = render(&case.job, &case.plan, &golden_context())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("spec.distributed.nccl.{key}")) && err.contains(needle),
            "{err}"
        );
    }
}

#[test]
fn indexed_job_runs_one_pod_per_node_with_the_plans_gpus() {
    let (_, plan, r) = rendered("multinode-kueue");
    let spec = r.job.spec.as_ref().expect("job spec");
    assert_eq!(r.job.metadata.name.as_deref(), Some("llama3-70b-sft-1"));
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!(spec.completions, Some(plan.nodes as i32));
    assert_eq!(spec.parallelism, Some(plan.nodes as i32));
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.active_deadline_seconds, Some(172800));
    assert_eq!(spec.ttl_seconds_after_finished, Some(3600));
    let pod = pod_spec(&r);
    assert_eq!(pod.subdomain.as_deref(), Some("llama3-70b-sft"));
    assert_eq!(
        pod.hostname, None,
        "the Indexed Job sets <job>-<index> itself"
    );
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.priority_class_name.as_deref(), Some("training-high"));
    assert_eq!(pod.scheduler_name.as_deref(), Some("default-scheduler"));
    assert!(pod.affinity.is_some() && pod.tolerations.is_some() && pod.node_selector.is_some());
    let res = container(&r).resources.as_ref().expect("resources");
    let gpu =
        |m: &Option<BTreeMap<String, _>>| m.as_ref().and_then(|m| m.get("nvidia.com/gpu")).cloned();
    assert_eq!(
        gpu(&res.requests).map(|q: k8s_openapi::apimachinery::pkg::api::resource::Quantity| q.0),
        Some("8".into())
    );
    assert_eq!(gpu(&res.requests), gpu(&res.limits));
    // The headless Service publishes not-ready pods and selects this job's trainer pods.
    let svc = r.service.spec.as_ref().expect("service spec");
    assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
    assert_eq!(svc.publish_not_ready_addresses, Some(true));
    let template_labels = r
        .job
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .expect("labels");
    for (k, v) in svc.selector.as_ref().expect("selector") {
        assert_eq!(
            template_labels.get(k),
            Some(v),
            "selector {k} does not match the pods"
        );
    }
}

#[test]
fn pod_failure_policy_fails_fast_on_config_errors_and_ignores_disruptions() {
    let (_, _, r) = rendered("minimal");
    let policy = r
        .job
        .spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.as_ref())
        .expect("a pod failure policy");
    let fail = policy
        .rules
        .iter()
        .find(|r| r.action == "FailJob")
        .expect("a FailJob rule");
    let codes = fail.on_exit_codes.as_ref().expect("exit codes");
    assert_eq!(
        (codes.operator.as_str(), codes.values.as_slice()),
        (
            "In",
            [exit_code::CONFIG, exit_code::OUTPUT_VOLUME_FULL].as_slice()
        )
    );
    assert_eq!(codes.container_name.as_deref(), Some("trainer"));
    let ignore = policy
        .rules
        .iter()
        .find(|r| r.action == "Ignore")
        .expect("an Ignore rule");
    assert_eq!(
        ignore.on_pod_conditions.as_ref().expect("conditions")[0].type_,
        "DisruptionTarget"
    );
    assert_eq!(
        r.job
            .spec
            .as_ref()
            .and_then(|s| s.pod_replacement_policy.as_deref()),
        Some("Failed")
    );
}

#[test]
fn kueue_jobs_are_created_suspended_with_the_queue_label() {
    let (_, _, r) = rendered("multinode-kueue");
    assert_eq!(r.job.spec.as_ref().and_then(|s| s.suspend), Some(true));
    assert_eq!(
        r.job
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kueue.x-k8s.io/queue-name"))
            .map(String::as_str),
        Some("gpu-team")
    );
    let (_, _, r) = rendered("minimal");
    assert_eq!(r.job.spec.as_ref().and_then(|s| s.suspend), Some(false));
    assert!(!r
        .job
        .metadata
        .labels
        .as_ref()
        .expect("labels")
        .contains_key("kueue.x-k8s.io/queue-name"));
    // spec.suspend suspends the Job too.
    let mut case = fixture("minimal");
    case.job.spec.suspend = true;
    let r = render(&case.job, &case.plan, &golden_context()).expect("renders");
    assert_eq!(r.job.spec.as_ref().and_then(|s| s.suspend), Some(true));
}

#[test]
fn shm_is_memory_backed_and_sized_from_the_plan() {
    let (_, plan, r) = rendered("multinode-kueue");
    assert_eq!(lf_render::shm_size_bytes(&plan), (256 + 8 * 1024) << 20);
    let mut one = plan.clone();
    one.gpus_per_node = 1;
    assert_eq!(lf_render::shm_size_bytes(&one), 256 << 20);
    let shm = pod_spec(&r)
        .volumes
        .as_ref()
        .expect("volumes")
        .iter()
        .find(|v| v.name == "dshm")
        .expect("dshm");
    let dir = shm.empty_dir.as_ref().expect("emptyDir");
    assert_eq!(dir.medium.as_deref(), Some("Memory"));
    assert_eq!(
        dir.size_limit.as_ref().map(|q| q.0.as_str()),
        Some("8448Mi")
    );
    let mount = container(&r)
        .volume_mounts
        .as_ref()
        .expect("mounts")
        .iter()
        .find(|m| m.name == "dshm")
        .expect("mount");
    assert_eq!(mount.mount_path, paths::SHM_DIR);
}

/// `spec.model.adapter`: mounted read-only at the adapter path the trainer config names; a path
/// in `spec.training` and an adapter without LoRA are refused with the key to fix.
#[test]
fn a_starting_adapter_is_mounted_read_only_and_named_in_the_config() {
    let mut case = fixture("minimal");
    assert_eq!(
        trainer_config(&case.job, &case.plan, &golden_context())
            .unwrap()
            .adapter_name_or_path,
        None
    );
    case.job.spec.model.adapter = Some(lf_api::crd::VolumeLocation {
        claim_name: "sft-output".into(),
        sub_path: Some("run-1".into()),
    });
    let c = trainer_config(&case.job, &case.plan, &golden_context()).unwrap();
    assert_eq!(c.adapter_name_or_path.as_deref(), Some(paths::ADAPTER_DIR));
    let r = render(&case.job, &case.plan, &golden_context()).expect("renders");
    let mounts = container(&r).volume_mounts.clone().expect("mounts");
    let adapter = mounts
        .iter()
        .find(|m| m.mount_path == paths::ADAPTER_DIR)
        .expect("the adapter is mounted");
    assert_eq!(
        (adapter.read_only, adapter.sub_path.as_deref()),
        (Some(true), Some("run-1"))
    );
    let volume = pod_spec(&r)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == adapter.name)
        .and_then(|v| v.persistent_volume_claim.as_ref())
        .expect("a claim volume");
    assert_eq!(
        (volume.claim_name.as_str(), volume.read_only),
        ("sft-output", Some(true))
    );

    let mut inline = fixture("minimal");
    inline.job.spec.training.adapter_name_or_path = Some("saves/sft".into());
    let err = render(&inline.job, &inline.plan, &golden_context())
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.model.adapter"), "{err}");
    case.job.spec.training.finetuning_type = lf_api::training::FinetuningType::Full;
    let err = render(&case.job, &case.plan, &golden_context())
        .unwrap_err()
        .to_string();
    assert!(err.contains("finetuning_type: lora"), "{err}");
}

#[test]
fn volumes_mount_model_and_data_read_only_and_share_a_claim() {
    let (_, _, r) = rendered("multinode-kueue");
    let mounts = container(&r).volume_mounts.clone().expect("mounts");
    let by_path: BTreeMap<&str, _> = mounts.iter().map(|m| (m.mount_path.as_str(), m)).collect();
    assert_eq!(by_path[paths::MODEL_DIR].read_only, Some(true));
    assert_eq!(
        by_path[paths::MODEL_DIR].sub_path.as_deref(),
        Some("llama3/70b")
    );
    assert_eq!(by_path[paths::DATA_DIR].read_only, Some(true));
    assert_eq!(
        by_path[paths::DATA_DIR].name,
        by_path[paths::MODEL_DIR].name,
        "one volume per claim"
    );
    assert_eq!(by_path[paths::OUTPUT_DIR].read_only, None);
    assert_eq!(by_path[paths::CONFIG_DIR].read_only, Some(true));
    let volumes = pod_spec(&r).volumes.clone().expect("volumes");
    let claims: Vec<&str> = volumes
        .iter()
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|p| p.claim_name.as_str())
        .collect();
    assert_eq!(claims, ["shared-models", "runs"]);
    // A claim shared by a read-only and a writable location is writable, mounted read-only where needed.
    let mut case = fixture("minimal");
    case.job.spec.output.claim_name = "models".into();
    let r = render(&case.job, &case.plan, &golden_context()).expect("renders");
    let volumes = pod_spec(&r).volumes.clone().expect("volumes");
    let models = volumes
        .iter()
        .find_map(|v| {
            v.persistent_volume_claim
                .as_ref()
                .filter(|p| p.claim_name == "models")
        })
        .expect("models");
    assert_eq!(models.read_only, None);
}

#[test]
fn pods_run_restricted_and_without_sidecars_by_default() {
    let (_, _, r) = rendered("minimal");
    let pod = pod_spec(&r);
    let psc = pod.security_context.as_ref().expect("pod security context");
    assert_eq!(
        (psc.run_as_non_root, psc.run_as_user),
        (Some(true), Some(65532))
    );
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    let c = container(&r);
    let sc = c
        .security_context
        .as_ref()
        .expect("container security context");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(
        c.termination_message_path.as_deref(),
        Some(paths::TERMINATION_LOG)
    );
    assert_eq!(
        c.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
    assert!(
        c.volume_mounts
            .as_ref()
            .expect("mounts")
            .iter()
            .any(|m| m.mount_path == "/tmp"),
        "a writable /tmp"
    );
    let meta = r
        .job
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.clone())
        .expect("template metadata");
    let annotations = meta.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("sidecar.istio.io/inject")
            .map(String::as_str),
        Some("false")
    );
    assert_eq!(
        annotations.get("linkerd.io/inject").map(String::as_str),
        Some("disabled")
    );
    assert_eq!(
        meta.labels
            .unwrap_or_default()
            .get("sidecar.istio.io/inject")
            .map(String::as_str),
        Some("false")
    );

    // Allowed by the job, or by the operator's default: no opt-out.
    let mut case = fixture("minimal");
    case.job.spec.run_policy.allow_sidecar_injection = true;
    let allowed_by_job = render(&case.job, &case.plan, &golden_context()).expect("renders");
    let case = fixture("minimal");
    let ctx = RenderContext {
        sidecar_injection_default: true,
        metrics_from: Vec::new(),
        ..golden_context()
    };
    let allowed_by_default = render(&case.job, &case.plan, &ctx).expect("renders");
    for r in [allowed_by_job, allowed_by_default] {
        let meta = r
            .job
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.clone())
            .expect("template metadata");
        assert!(!meta
            .annotations
            .unwrap_or_default()
            .contains_key("sidecar.istio.io/inject"));
        assert!(!meta
            .labels
            .unwrap_or_default()
            .contains_key("sidecar.istio.io/inject"));
    }
}

#[test]
fn trainer_may_only_patch_its_own_status() {
    let (_, _, r) = rendered("minimal");
    let rules = r.role.rules.as_ref().expect("rules");
    assert_eq!(rules.len(), 1);
    let rule = &rules[0];
    assert_eq!(
        rule.api_groups.as_deref(),
        Some(["lf-operator.io".to_string()].as_slice())
    );
    assert_eq!(
        rule.resources.as_deref(),
        Some(["finetunejobs/status".to_string()].as_slice())
    );
    assert_eq!(
        rule.resource_names.as_deref(),
        Some(["minimal".to_string()].as_slice())
    );
    assert_eq!(rule.verbs, ["patch"]);
    assert_eq!(
        r.role_binding.role_ref.name,
        r.role.metadata.name.clone().unwrap_or_default()
    );
    let subject = &r.role_binding.subjects.as_ref().expect("subjects")[0];
    assert_eq!(
        Some(&subject.name),
        r.service_account.metadata.name.as_ref()
    );
    assert_eq!(
        pod_spec(&r).service_account_name,
        r.service_account.metadata.name
    );
}

#[test]
fn later_attempts_get_their_own_job_and_hostnames() {
    let case = fixture("multinode-kueue");
    let ctx = RenderContext {
        attempt: 7,
        ..golden_context()
    };
    let r = render(&case.job, &case.plan, &ctx).expect("renders");
    assert_eq!(r.job.metadata.name.as_deref(), Some("llama3-70b-sft-7"));
    let m = env_map(container(&r).env.as_ref().expect("env"));
    assert_eq!(
        m[env::MASTER_ADDR],
        Some("llama3-70b-sft-7-0.llama3-70b-sft")
    );
    assert_eq!(m[env::ATTEMPT], Some("7"));
}

#[test]
fn bad_input_is_a_clear_error() {
    let check = |mutate: &dyn Fn(&mut FineTuneJob, &mut Plan, &mut RenderContext), needle: &str| {
        let mut case = fixture("minimal");
        let mut ctx = golden_context();
        mutate(&mut case.job, &mut case.plan, &mut ctx);
        let err: RenderError = render(&case.job, &case.plan, &ctx).expect_err(needle);
        let text = err.to_string();
        assert!(text.contains(needle), "expected `{needle}` in: {text}");
    };
    check(
        &|j, _, _| j.spec.model.source = None,
        "spec.model.source is required",
    );
    check(
        &|j, _, _| {
            j.spec.checkpointing = Some(
                serde_json::from_value(serde_json::json!({"location": {"claimName": "ckpt"}}))
                    .expect("checkpointing"),
            )
        },
        "spec.checkpointing.location is not supported",
    );
    check(
        &|j, _, _| j.spec.data.source.sub_path = Some("../etc".into()),
        "spec.data.source.subPath",
    );
    check(
        &|j, _, _| j.spec.output.sub_path = Some("/abs".into()),
        "spec.output.subPath",
    );
    check(&|_, p, _| p.gpus = 3, "invalid plan");
    check(&|_, p, _| p.nodes = 0, "invalid plan");
    check(&|_, _, c| c.attempt = 0, "attempt numbers start at 1");
    check(&|_, _, c| c.default_image.clear(), "no trainer image");
    check(
        &|j, _, _| j.metadata.name = Some("Bad.Name".into()),
        "metadata.name `Bad.Name`",
    );
}
