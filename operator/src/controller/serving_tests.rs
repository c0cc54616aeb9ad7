use super::*;
use lf_api::status::{CheckpointRecord, Phase};

fn job(serve: Option<&str>) -> FineTuneJob {
    let serve = serve.map(|s| format!("  serve: {s}\n")).unwrap_or_default();
    let mut ftj = FineTuneJob::from_yaml_str(&format!(
        "apiVersion: lf-operator.io/v1alpha1\nkind: FineTuneJob\nmetadata: {{name: demo, namespace: team, uid: u-1}}\nspec:\n  \
         model: {{name: meta-llama/Meta-Llama-3-8B, source: {{claimName: models}}}}\n  \
         data: {{source: {{claimName: data}}}}\n  output: {{claimName: out}}\n  \
         resources: {{gpuMemoryGib: 24, gpusPerNode: 1}}\n  training: {{lora_rank: 8, bf16: true, cutoff_len: 1024}}\n{serve}"
    ))
    .unwrap();
    let mut status = lf_api::FineTuneJobStatus {
        phase: Phase::Succeeded,
        ..Default::default()
    };
    status.checkpoints.push(CheckpointRecord {
        step: 50,
        path: "/output/checkpoint-50".into(),
        saved_at: lf_api::conditions::now(),
        loss: None,
    });
    ftj.status = Some(status);
    ftj
}

#[test]
fn decisions() {
    assert_eq!(decide(&job(None), "img"), ServeDecision::Nothing);
    let ServeDecision::Serve(r, s) = decide(&job(Some("{}")), "img") else {
        panic!("a fitting server is served")
    };
    assert_eq!(s.url, "http://demo-serve.team.svc:8000");
    assert_eq!((s.model.as_str(), s.served.as_str()), ("demo", "final"));
    assert!(s.gpu_memory_bytes > 16 << 30 && s.kv_cache_bytes == 16 * 1024 * 32 * 2 * 8 * 128 * 2);
    assert_eq!(r.deployment.metadata.name.as_deref(), Some("demo-serve"));
    let ServeDecision::Serve(_, s) = decide(&job(Some("{checkpointStep: 50}")), "img") else {
        panic!("a listed checkpoint is served")
    };
    assert_eq!(s.served, "checkpoint-50");
    match decide(&job(Some("{checkpointStep: 70}")), "img") {
        ServeDecision::Refused("CheckpointNotFound", m) => assert!(m.contains("steps: 50"), "{m}"),
        other => panic!("{other:?}"),
    }
    match decide(&job(Some("{maxConcurrency: 64, maxModelLen: 8192}")), "img") {
        ServeDecision::Refused("DoesNotFit", m) => assert!(m.contains("maxConcurrency"), "{m}"),
        other => panic!("{other:?}"),
    }
    match decide(&job(Some("{}")), "") {
        ServeDecision::Refused("InvalidSpec", m) => assert!(m.contains("image"), "{m}"),
        other => panic!("{other:?}"),
    }
}

fn deployment(generation: i64, observed: i64, ready: i32, updated: i32) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "demo-serve", "generation": generation},
        "spec": {"selector": {}, "template": {}},
        "status": {"observedGeneration": observed, "readyReplicas": ready, "updatedReplicas": updated}
    }))
    .unwrap()
}

#[test]
fn ready_replicas_serve_the_current_template() {
    for (d, want) in [
        (deployment(2, 2, 2, 2), 2),
        // Mid-rollout: one new replica ready, the old ones still counted ready.
        (deployment(2, 2, 3, 1), 1),
        // The Deployment controller has not seen the new spec yet.
        (deployment(3, 2, 2, 2), 0),
    ] {
        assert_eq!(ready_current(&d), want);
    }
    let mut d = deployment(1, 1, 0, 0);
    d.status = None;
    assert_eq!(ready_current(&d), 0);
}

#[test]
fn conditions() {
    let mut s = ServingStatus {
        url: "http://demo-serve.team.svc:8000".into(),
        model: "demo".into(),
        served: "final".into(),
        replicas: 2,
        ..Default::default()
    };
    assert_eq!(serving_condition(&s).1, "Starting");
    s.ready_replicas = 1;
    let (ok, reason, message) = serving_condition(&s);
    assert!(ok && reason == "Ready" && message.contains("1/2") && message.contains("/v1"));
    s.replicas = 0;
    assert_eq!(serving_condition(&s).1, "ScaledToZero");
}
