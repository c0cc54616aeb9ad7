//! Test helpers that play the parts of the Job controller and the kubelet, which the fake does
//! not run: create a Job's pods, move pods through phases, terminate containers, set conditions.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::server::FakeApiServer;

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Termination {
    pub exit_code: i32,
    /// The kubelet's reason (`Error`, `OOMKilled`, `Completed`).
    pub reason: Option<String>,
    /// The termination message (what the container wrote to its termination log).
    pub message: Option<String>,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn upsert_condition(list: &mut Value, condition: Value) {
    if !list.is_array() {
        *list = json!([]);
    }
    let Some(items) = list.as_array_mut() else {
        return;
    };
    let ty = condition.get("type").cloned();
    items.retain(|c| c.get("type") != ty.as_ref());
    items.push(condition);
}

impl FakeApiServer {
    /// Creates the pods of an Indexed Job as the Job controller would: one per completion index,
    /// from the pod template, named `<job>-<index>-<suffix>`, with the Job's labels and the
    /// completion-index annotation, owned by the Job, phase `Pending`. Returns their names.
    pub fn start_job_pods(&self, namespace: &str, job: &str) -> Result<Vec<String>, ApiError> {
        let job_obj = self
            .get_value::<Job>(namespace, job)
            .ok_or_else(|| ApiError::bad_request(&format!("no Job {namespace}/{job}")))?;
        let completions = job_obj
            .pointer("/spec/completions")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let template = job_obj
            .pointer("/spec/template")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let uid = job_obj
            .pointer("/metadata/uid")
            .cloned()
            .unwrap_or(Value::Null);
        let mut names = Vec::new();
        for index in 0..completions {
            let name = format!(
                "{job}-{index}-{:05x}",
                (self.resource_version() * 7919 + index as u64) % 0xfffff
            );
            let mut meta = template
                .get("metadata")
                .cloned()
                .unwrap_or_else(|| json!({}));
            meta["name"] = json!(name);
            meta["namespace"] = json!(namespace);
            let labels = meta
                .as_object_mut()
                .map(|m| m.entry("labels").or_insert_with(|| json!({})));
            if let Some(Value::Object(labels)) = labels {
                labels.insert("batch.kubernetes.io/job-name".into(), json!(job));
                labels.insert("job-name".into(), json!(job));
                labels.insert(
                    "batch.kubernetes.io/job-completion-index".into(),
                    json!(index.to_string()),
                );
            }
            let annotations = meta
                .as_object_mut()
                .map(|m| m.entry("annotations").or_insert_with(|| json!({})));
            if let Some(Value::Object(a)) = annotations {
                a.insert(
                    "batch.kubernetes.io/job-completion-index".into(),
                    json!(index.to_string()),
                );
            }
            meta["ownerReferences"] = json!([{
                "apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": uid,
                "controller": true, "blockOwnerDeletion": true
            }]);
            let mut spec = template.get("spec").cloned().unwrap_or_else(|| json!({}));
            spec["hostname"] = json!(format!("{job}-{index}"));
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
                "status": {"phase": "Pending"}
            });
            self.create_value(pod)?;
            names.push(name);
        }
        Ok(names)
    }

    /// Puts a pod in phase `Running` with every container running and `Ready=True`.
    pub fn set_pod_running(&self, namespace: &str, pod: &str) -> Result<Value, ApiError> {
        self.modify::<Pod>(namespace, pod, "kubelet", |p| {
            let names = container_names(p);
            p["status"]["phase"] = json!("Running");
            p["status"]["startTime"] = json!(now());
            p["status"]["containerStatuses"] = Value::Array(
                names
                    .iter()
                    .map(|n| json!({"name": n, "ready": true, "restartCount": 0, "image": "", "imageID": "",
                                    "state": {"running": {"startedAt": now()}}}))
                    .collect(),
            );
            upsert_condition(&mut p["status"]["conditions"], json!({"type": "Ready", "status": "True", "lastTransitionTime": now()}));
        })
    }

    /// Sets a pod's phase only (e.g. `Pending`, `Succeeded`).
    pub fn set_pod_phase(
        &self,
        namespace: &str,
        pod: &str,
        phase: &str,
    ) -> Result<Value, ApiError> {
        self.modify::<Pod>(namespace, pod, "kubelet", |p| {
            p["status"]["phase"] = json!(phase)
        })
    }

    /// Ends a pod's first container as described; the pod's phase becomes `Succeeded` for exit
    /// code 0, else `Failed`.
    pub fn terminate_pod(
        &self,
        namespace: &str,
        pod: &str,
        t: &Termination,
    ) -> Result<Value, ApiError> {
        self.modify::<Pod>(namespace, pod, "kubelet", |p| {
            let names = container_names(p);
            let first = names.first().cloned().unwrap_or_else(|| "trainer".into());
            let mut terminated = json!({"exitCode": t.exit_code, "finishedAt": now(),
                "reason": t.reason.clone().unwrap_or_else(|| if t.exit_code == 0 { "Completed".into() } else { "Error".into() })});
            if let Some(m) = &t.message {
                terminated["message"] = json!(m);
            }
            p["status"]["phase"] = json!(if t.exit_code == 0 { "Succeeded" } else { "Failed" });
            p["status"]["containerStatuses"] = json!([{"name": first, "ready": false, "restartCount": 0,
                "image": "", "imageID": "", "state": {"terminated": terminated}}]);
            upsert_condition(&mut p["status"]["conditions"], json!({"type": "Ready", "status": "False", "lastTransitionTime": now()}));
        })
    }

    /// Adds or replaces a pod condition (e.g. `DisruptionTarget` on preemption, or
    /// `PodScheduled=False` with reason `Unschedulable`).
    pub fn set_pod_condition(
        &self,
        namespace: &str,
        pod: &str,
        type_: &str,
        status: &str,
        reason: &str,
        message: &str,
    ) -> Result<Value, ApiError> {
        self.modify::<Pod>(namespace, pod, "kubelet", |p| {
            upsert_condition(
                &mut p["status"]["conditions"],
                json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": now()}),
            );
        })
    }

    /// Marks a container as waiting (e.g. `ImagePullBackOff`).
    pub fn set_pod_waiting(
        &self,
        namespace: &str,
        pod: &str,
        reason: &str,
        message: &str,
    ) -> Result<Value, ApiError> {
        self.modify::<Pod>(namespace, pod, "kubelet", |p| {
            let names = container_names(p);
            p["status"]["containerStatuses"] = Value::Array(
                names
                    .iter()
                    .map(|n| json!({"name": n, "ready": false, "restartCount": 0, "image": "", "imageID": "",
                                    "state": {"waiting": {"reason": reason, "message": message}}}))
                    .collect(),
            );
        })
    }

    /// Adds or replaces a Job condition (`Complete`, `Failed`, `Suspended`...), as the Job
    /// controller would.
    pub fn set_job_condition(
        &self,
        namespace: &str,
        job: &str,
        type_: &str,
        status: &str,
        reason: &str,
        message: &str,
    ) -> Result<Value, ApiError> {
        self.modify::<Job>(namespace, job, "job-controller", |j| {
            upsert_condition(
                &mut j["status"]["conditions"],
                json!({"type": type_, "status": status, "reason": reason, "message": message,
                       "lastTransitionTime": now(), "lastProbeTime": now()}),
            );
        })
    }
}

fn container_names(pod: &Value) -> Vec<String> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
