//! A real controller against the in-memory API server, and helpers to play the trainer, the Job
//! controller and the kubelet.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use lf_api::status::TRAINER_FIELD_MANAGER;
use lf_api::{FineTuneJob, FineTuneJobStatus};
use lf_fake_apiserver::{FakeApiServer, Termination};
use lf_operator::controller::{self, ControllerConfig};
use lf_operator::metrics::Metrics;
use serde_json::json;

pub const NS: &str = "default";

/// Llama-3-8B LoRA on one 24 GiB GPU: one pod, micro-batch 2 (so an OOM can re-plan to 1).
pub const JOB: &str = r#"
apiVersion: lf-operator.io/v1alpha1
kind: FineTuneJob
metadata:
  name: demo
  namespace: default
spec:
  model:
    name: meta-llama/Meta-Llama-3-8B-Instruct
    source: {claimName: models, subPath: llama3}
  data:
    source: {claimName: datasets, subPath: alpaca}
  output: {claimName: outputs, subPath: demo}
  resources:
    gpuMemoryGib: 24
    gpusPerNode: 1
    maxGpus: 1
  runPolicy:
    maxRestarts: 3
  training:
    finetuning_type: lora
    lora_rank: 16
    dataset: alpaca_en
    cutoff_len: 2048
    per_device_train_batch_size: 4
    gradient_accumulation_steps: 4
    bf16: true
"#;

pub struct Env {
    pub fake: FakeApiServer,
    pub client: Client,
    pub metrics: Metrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn config() -> ControllerConfig {
    ControllerConfig {
        default_image: "registry.example/lf-trainer:test".into(),
        wait_poll: Duration::from_millis(50),
        resync: Duration::from_secs(60),
        ..ControllerConfig::default()
    }
}

impl Env {
    pub fn new() -> Self {
        let fake = FakeApiServer::new().with_crd(&FineTuneJob::definition());
        let client = fake.client();
        let metrics = Metrics::new().expect("metrics register");
        Env {
            fake,
            client,
            metrics,
            stop: None,
            task: None,
        }
    }

    /// Starts (or restarts) the operator.
    pub fn start(&mut self) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            let _ = rx.await;
        };
        let task = tokio::spawn(controller::run(
            self.fake.client(),
            config(),
            self.metrics.clone(),
            stop,
        ));
        self.stop = Some(tx);
        self.task = Some(task);
    }

    /// Stops the operator and waits for it to finish.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    pub async fn submit(&self, yaml: &str) -> FineTuneJob {
        let job = FineTuneJob::from_yaml_str(yaml).expect("test job parses");
        Api::<FineTuneJob>::namespaced(self.client.clone(), NS)
            .create(&PostParams::default(), &job)
            .await
            .expect("create FineTuneJob")
    }

    pub fn ftj(&self, name: &str) -> FineTuneJob {
        self.fake
            .get::<FineTuneJob>(NS, name)
            .expect("FineTuneJob exists")
    }

    pub fn status(&self, name: &str) -> FineTuneJobStatus {
        self.ftj(name).status.unwrap_or_default()
    }

    /// Polls `check` every 10 ms until it holds, or panics after 10 s showing the status.
    pub async fn until(&self, what: &str, name: &str, check: impl Fn(&Env) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if check(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = self
            .fake
            .get_value::<FineTuneJob>(NS, name)
            .and_then(|v| v.get("status").cloned());
        panic!(
            "timed out waiting for {what}; status: {}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
    }

    pub fn job_names(&self, ftj: &str) -> Vec<String> {
        self.fake
            .list::<Job>(Some(NS), &format!("lf-operator.io/job-name={ftj}"))
            .iter()
            .map(|j| j.name_any())
            .collect()
    }

    pub fn pods_of(&self, job: &str) -> Vec<String> {
        self.fake
            .list::<Pod>(Some(NS), &format!("batch.kubernetes.io/job-name={job}"))
            .iter()
            .map(|p| p.name_any())
            .collect()
    }

    /// Plays the Job controller and the kubelet: the attempt's pods exist and run.
    pub async fn run_pods(&self, job: &str) -> Vec<String> {
        self.until(&format!("Job {job}"), "demo", |e| {
            e.fake.get::<Job>(NS, job).is_some()
        })
        .await;
        let pods = self.fake.start_job_pods(NS, job).expect("start pods");
        for p in &pods {
            self.fake.set_pod_running(NS, p).expect("pod running");
        }
        pods
    }

    pub fn fail_pod(&self, pod: &str, exit_code: i32, reason: Option<&str>, message: Option<&str>) {
        self.fake
            .terminate_pod(
                NS,
                pod,
                &Termination {
                    exit_code,
                    reason: reason.map(Into::into),
                    message: message.map(Into::into),
                },
            )
            .expect("terminate pod");
    }

    /// Plays the trainer: records a checkpoint and progress through its own field manager.
    pub async fn trainer_reports(&self, name: &str, step: u64, measured_peak: Option<u64>) {
        let api = Api::<FineTuneJob>::namespaced(self.client.clone(), NS);
        let body = json!({
            "apiVersion": "lf-operator.io/v1alpha1", "kind": "FineTuneJob",
            "status": {
                "progress": {"step": step, "totalSteps": 100, "stepDisplay": format!("{step}/100"), "epoch": 0.5,
                             "loss": 1.25, "measuredPeakBytes": measured_peak},
                "checkpoints": [{"step": step, "path": format!("/output/checkpoint-{step}"), "savedAt": "2026-01-01T00:00:00Z"}]
            }
        });
        api.patch_status(
            name,
            &PatchParams::apply(TRAINER_FIELD_MANAGER),
            &Patch::Apply(&body),
        )
        .await
        .expect("trainer status apply");
    }

    pub fn config_map_text(&self, name: &str) -> String {
        let cm = self
            .fake
            .get::<ConfigMap>(NS, &format!("{name}-config"))
            .expect("ConfigMap exists");
        cm.data
            .unwrap_or_default()
            .into_values()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Reasons of the Events recorded about the FineTuneJob (events.k8s.io/v1).
    pub fn event_reasons(&self) -> Vec<String> {
        self.fake
            .list::<k8s_openapi::api::events::v1::Event>(Some(NS), "")
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }
}
