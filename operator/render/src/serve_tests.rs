use super::*;
use crate::tests_support::minimal_job;

fn job(serve: &str, extra: &str) -> FineTuneJob {
    FineTuneJob::from_yaml_str(&format!(
        "apiVersion: lf-operator.io/v1alpha1\nkind: FineTuneJob\nmetadata: {{name: demo, namespace: team, uid: u-1}}\nspec:\n  \
         model: {{name: meta-llama/Meta-Llama-3-8B, source: {{claimName: models, subPath: llama3}}}}\n  \
         data: {{source: {{claimName: data}}}}\n  output: {{claimName: out, subPath: runs/demo}}\n  \
         resources: {{gpuMemoryGib: 24, gpusPerNode: 1, nodeSelector: {{pool: gpu}}}}\n  serve: {serve}\n{extra}"
    ))
    .unwrap()
}

fn ctx(checkpoint: Option<&str>) -> ServeContext {
    ServeContext {
        default_image: "lf:1".into(),
        checkpoint_path: checkpoint.map(str::to_string),
        revision: "u-1/final".into(),
        kv_tokens: 4096,
        host_memory_bytes: 3 << 30,
    }
}

fn container(d: &Deployment) -> &Container {
    &d.spec.template.spec.as_ref().unwrap().containers[0]
}

#[test]
fn no_serve_renders_nothing() {
    assert!(serve(&minimal_job(), &ctx(None)).unwrap().is_none());
}

#[test]
fn a_lora_result_is_served_on_its_base_under_the_jobs_name() {
    let r = serve(
        &job("{replicas: 2, port: 9000, maxConcurrency: 8}", ""),
        &ctx(None),
    )
    .unwrap()
    .unwrap();
    let config: lf_api::TrainingConfig = lf_api::TrainingConfig::from_yaml_str(
        &r.config_map.data.as_ref().unwrap()[SERVE_CONFIG_KEY],
    )
    .unwrap();
    assert_eq!(
        config.model_name_or_path.as_deref(),
        Some("/models/Meta-Llama-3-8B")
    );
    assert_eq!(
        config.adapter_name_or_path.as_deref(),
        Some("/adapters/demo")
    );
    assert!(config.output_dir.is_none());

    let d = &r.deployment;
    let spec = &d.spec;
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(d.metadata.name.as_deref(), Some("demo-serve"));
    assert_eq!(d.metadata.owner_references.as_ref().unwrap()[0].uid, "u-1");
    let c = container(d);
    let cmd = c.command.as_ref().unwrap();
    assert_eq!(&cmd[..2], ["lf-trainer", "serve"]);
    for (flag, value) in [
        ("--port", "9000"),
        ("--max-running", "8"),
        ("--max-kv-tokens", "4096"),
        ("--host", "0.0.0.0"),
    ] {
        let i = cmd.iter().position(|a| a == flag).unwrap();
        assert_eq!(cmd[i + 1], value, "{flag}");
    }
    let mounts: Vec<(&str, Option<&str>)> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.mount_path.as_str(), m.sub_path.as_deref()))
        .collect();
    assert!(mounts.contains(&("/models/Meta-Llama-3-8B", Some("llama3"))));
    assert!(mounts.contains(&("/adapters/demo", Some("runs/demo"))));
    assert!(c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .all(|m| m.mount_path == TMP_DIR || m.read_only == Some(true)));
    let probe = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.path.as_deref(), Some("/health"));
    let res = c.resources.as_ref().unwrap();
    assert_eq!(res.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "1");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "3072Mi");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "6144Mi");
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.node_selector.as_ref().unwrap()["pool"], "gpu");
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(
        c.security_context
            .as_ref()
            .unwrap()
            .read_only_root_filesystem,
        Some(true)
    );
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    for (k, v) in spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(
            template_labels.get(k),
            Some(v),
            "the selector matches the pods"
        );
    }
    // Never the trainer's selector: the job's NetworkPolicy does not apply to the server.
    assert_eq!(template_labels["app.kubernetes.io/component"], "serve");
    let svc = r.service.spec.as_ref().unwrap();
    assert_eq!(svc.selector.as_ref(), spec.selector.match_labels.as_ref());
    assert_eq!(svc.ports.as_ref().unwrap()[0].port, 9000);
}

#[test]
fn a_checkpoint_is_served_from_its_directory_and_rolls_the_deployment() {
    let j = job("{checkpointStep: 100}", "");
    let final_ = serve(&j, &ctx(None)).unwrap().unwrap();
    let mut c = ctx(Some("/output/checkpoint-100"));
    c.revision = "u-1/checkpoint-100".into();
    let r = serve(&j, &c).unwrap().unwrap();
    let mounts = container(&r.deployment).volume_mounts.clone().unwrap();
    let adapter = mounts
        .iter()
        .find(|m| m.mount_path == "/adapters/demo")
        .unwrap();
    assert_eq!(
        adapter.sub_path.as_deref(),
        Some("runs/demo/checkpoint-100")
    );
    let annotation = |d: &Deployment| {
        d.spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[SERVED_REVISION]
            .clone()
    };
    assert_ne!(annotation(&r.deployment), annotation(&final_.deployment));
    let err = serve(&j, &ctx(Some("/elsewhere/checkpoint-100"))).unwrap_err();
    assert!(
        err.to_string().contains("not inside the output volume"),
        "{err}"
    );
}

#[test]
fn a_full_result_is_a_whole_model() {
    let j = job("{}", "  training: {finetuning_type: full}\n");
    let r = serve(&j, &ctx(None)).unwrap().unwrap();
    let config = lf_api::TrainingConfig::from_yaml_str(
        &r.config_map.data.as_ref().unwrap()[SERVE_CONFIG_KEY],
    )
    .unwrap();
    assert_eq!(config.model_name_or_path.as_deref(), Some("/served/demo"));
    assert!(config.adapter_name_or_path.is_none());
    let err = serve(&j, &ctx(Some("/output/checkpoint-5"))).unwrap_err();
    assert!(err.to_string().contains("checkpointStep"), "{err}");
}

#[test]
fn base_ids_are_directory_names() {
    assert_eq!(base_id("meta-llama/Meta-Llama-3-8B"), "Meta-Llama-3-8B");
    assert_eq!(base_id("tiny"), "tiny");
    assert_eq!(base_id("org/we ird:name"), "we-ird-name");
    assert_eq!(base_id(".."), "base");
}
