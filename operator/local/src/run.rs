//! The local run, start to end: plan → render → pods as processes → status → summary.

use std::path::{Path, PathBuf};

use lf_api::conditions::{self, set_phase, types};
use lf_api::runtime::FailureReason;
use lf_api::status::{FailureRecord, FineTuneJobStatus, Phase, RestartRecord};
use lf_api::{FineTuneJob, ModelArchitecture};
use lf_planner::PlannerInput;
use lf_render::RenderContext;

use crate::pods::{local_pods, local_training_config};
use crate::progress::ProgressView;
use crate::status::StatusFollower;
use crate::summary::Summary;
use crate::supervise::{run_gang, tail};
use crate::volumes::VolumeMap;

/// What `lf-operator local` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    /// The FineTuneJob file.
    pub job_file: PathBuf,
    /// `CLAIM=PATH` mappings.
    pub volumes: Vec<String>,
    /// Where config, logs, status and unmapped volumes go (default `lf-local/<job name>`).
    pub workdir: Option<PathBuf>,
    /// The `lf-trainer` binary (default: next to this executable, or `LF_TRAINER`).
    pub trainer: Option<PathBuf>,
    /// Worker processes per pod (default 1).
    pub nproc_per_node: Option<u32>,
    /// Use exactly this many GPUs (processes; pods = this / `nproc_per_node`), with the job's
    /// fixed ZeRO stage (or 0), instead of the planner's choice of the fewest that fit.
    pub gpus: Option<u32>,
    /// Also write the final status YAML here.
    pub status_out: Option<PathBuf>,
}

/// The result: the FineTuneJob with its final status, and the summary.
#[derive(Debug, Clone)]
pub struct LocalOutcome {
    pub job: FineTuneJob,
    pub summary: Option<Summary>,
    pub workdir: PathBuf,
}

/// Why a local run could not start or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Job {
        path: PathBuf,
        source: lf_api::ConfigError,
    },
    #[error(transparent)]
    Volume(#[from] crate::volumes::BadVolumeArg),
    #[error("the model: {0}")]
    Model(#[from] lf_api::architecture::ArchitectureError),
    #[error("planning: {0}")]
    Plan(#[from] lf_planner::PlanError),
    #[error("the job does not fit: {0}")]
    DoesNotFit(String),
    #[error("rendering: {0}")]
    Render(#[from] lf_render::RenderError),
    #[error(transparent)]
    Pods(#[from] crate::pods::PodError),
    #[error(transparent)]
    Supervise(#[from] crate::supervise::SuperviseError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find the lf-trainer binary (looked at {0}); build it with `cargo build --bin lf-trainer` or pass --trainer")]
    NoTrainer(PathBuf),
    #[error(
        "{name} already succeeded (status in {workdir}); remove that directory to train again"
    )]
    AlreadySucceeded { name: String, workdir: PathBuf },
    #[error("training failed on pod {pod} (exit code {code}); last log lines of {log}:\n{tail}")]
    Failed {
        pod: u32,
        code: String,
        log: PathBuf,
        tail: String,
    },
    #[error("stopped; the last checkpoint is kept — run the same command again to resume")]
    Interrupted,
    #[error("{0} names no output_dir: nothing to serve")]
    NoOutput(PathBuf),
    #[error("cannot start {path} serve: {source}")]
    StartServe {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lf-trainer serve exited with {0} (its output is above)")]
    ServeExited(String),
}

/// Runs a FineTuneJob locally.
pub fn run(opts: &LocalOptions) -> Result<LocalOutcome, LocalError> {
    let text = std::fs::read_to_string(&opts.job_file).map_err(|source| LocalError::Read {
        path: opts.job_file.clone(),
        source,
    })?;
    let mut job = FineTuneJob::from_yaml_str(&text).map_err(|source| LocalError::Job {
        path: opts.job_file.clone(),
        source,
    })?;
    let name = job
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| "finetunejob".to_string());
    job.metadata
        .namespace
        .get_or_insert_with(|| "default".to_string());
    job.metadata
        .uid
        .get_or_insert_with(|| format!("local-{name}"));
    let workdir = opts
        .workdir
        .clone()
        .unwrap_or_else(|| PathBuf::from("lf-local").join(&name));
    let job_dir = opts
        .job_file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut volumes = VolumeMap::new(&job_dir, &workdir);
    for v in &opts.volumes {
        volumes.add_arg(v)?;
    }

    // The previous run of this job in this workdir, as the operator keeps it on the CR.
    let status_path = workdir.join("status.yaml");
    let mut status: FineTuneJobStatus = std::fs::read_to_string(&status_path)
        .ok()
        .and_then(|t| serde_yaml::from_str(&t).ok())
        .unwrap_or_default();
    if status.phase == Phase::Succeeded {
        return Err(LocalError::AlreadySucceeded { name, workdir });
    }

    // Plan: the model's own config.json when the job does not carry its architecture.
    if job.spec.model.architecture.is_none() {
        if let Some(src) = &job.spec.model.source {
            let dir = volumes.resolve(&src.claim_name, src.sub_path.as_deref());
            if lf_planner::preset(&job.spec.model.name).is_none() {
                job.spec.model.architecture = Some(ModelArchitecture::from_model_dir(&dir)?);
            }
        }
    }
    let nproc = opts.nproc_per_node.unwrap_or(1).max(1);
    job.spec.resources.gpus_per_node = nproc;
    job.spec.resources.max_gpus = Some(job.spec.resources.max_gpus.unwrap_or(nproc).max(nproc));
    if let Some(g) = opts.gpus {
        if g == 0 || g % nproc != 0 {
            return Err(LocalError::DoesNotFit(format!(
                "--gpus {g} must be a positive multiple of --nproc-per-node {nproc} (pods × processes per pod)"
            )));
        }
        job.spec.resources.max_gpus = Some(g);
    }
    let input = PlannerInput::from_job(&job)?;
    let plan = match opts.gpus {
        Some(g) => {
            let stage = job.spec.distributed.zero_stage.fixed().unwrap_or(0);
            let plan = lf_planner::evaluate_fixed(&input, g, stage);
            if !plan.fits {
                return Err(LocalError::DoesNotFit(format!(
                    "{g} processes with ZeRO-{stage}: {}",
                    plan.summary
                )));
            }
            eprintln!(
                "USING  {} processes ({} pods × {}), ZeRO-{}, micro-batch {} × {} accumulation (--gpus)",
                plan.gpus,
                plan.nodes,
                plan.gpus_per_node,
                plan.zero_stage,
                plan.micro_batch_size,
                plan.gradient_accumulation_steps
            );
            plan
        }
        None => {
            let search = lf_planner::search(&input);
            let Some(plan) = search.chosen.clone() else {
                let why = search
                    .failure_message()
                    .unwrap_or_else(|| "no configuration fits".to_string());
                return Err(LocalError::DoesNotFit(why));
            };
            eprintln!("{}", lf_planner::format_table(&search));
            plan
        }
    };
    let generation = job.metadata.generation;
    set_phase(
        &mut status,
        Phase::Planning,
        "Planned",
        &lf_planner::plan_summary(&plan),
        generation,
    );
    status.plan = Some(plan.clone());
    status.method = Some(job.method_label());

    // A new attempt after an interrupted or failed one resumes from the newest checkpoint.
    let attempt = status.attempt.map_or(1, |a| a + 1);
    if attempt > 1 {
        let reason = status
            .failure
            .as_ref()
            .map_or(FailureReason::Preempted, |f| f.reason);
        status.restarts.push(RestartRecord {
            attempt,
            reason,
            // The status's newest checkpoint, or a newer complete one written while stopping.
            resumed_from_step: status.latest_checkpoint().map(|c| c.step).max(
                status
                    .output
                    .as_deref()
                    .and_then(|o| newest_complete_checkpoint(Path::new(o))),
            ),
            counted: reason != FailureReason::Preempted,
            at: conditions::now(),
        });
    }
    status.attempt = Some(attempt);
    status.failure = None;
    resume(&mut status, attempt, generation);

    let ctx = RenderContext {
        default_image: "lf-trainer:local".to_string(),
        attempt,
        resume_from: None,
        sidecar_injection_default: false,
        metrics_from: Vec::new(),
    };
    let rendered = lf_render::render(&job, &plan, &ctx)?;
    let config_dir = workdir.join("config");
    let log_dir = workdir.join("logs");
    for d in [&config_dir, &log_dir] {
        std::fs::create_dir_all(d).map_err(|source| LocalError::Write {
            path: d.clone(),
            source,
        })?;
    }
    write(&workdir.join("rendered.yaml"), &rendered.to_yaml_stream())?;
    let config = local_training_config(&rendered.config_map, &rendered.job, &volumes, &config_dir)?;
    if let Some(out) = &config.output_dir {
        std::fs::create_dir_all(out).map_err(|source| LocalError::Write {
            path: out.into(),
            source,
        })?;
    }
    let config_file = config_dir.join("train.yaml");
    write(&config_file, &config.to_yaml_string())?;
    let status_file = workdir.join("trainer-status.jsonl");
    let pods = local_pods(
        &rendered.job,
        &volumes,
        &config_dir,
        &config_file,
        free_port(),
        &status_file,
    )?;
    let trainer = find_trainer(opts)?;

    let stop = crate::stop::stop_flag();
    set_phase(
        &mut status,
        Phase::Running,
        "PodsRunning",
        &format!("attempt {attempt}: {} pod(s) running", pods.len()),
        generation,
    );
    save_status(&status_path, &status)?;
    let mut view = ProgressView::new();
    let mut follower = StatusFollower::new(&status_file);
    let started = std::time::Instant::now();
    let outcome = run_gang(
        &trainer,
        &pods,
        &log_dir,
        &mut status,
        &mut follower,
        &mut view,
        &stop,
    )?;
    view.finish();

    let output_dir = config
        .output_dir
        .clone()
        .map(PathBuf::from)
        .unwrap_or_default();
    status.output = Some(output_dir.display().to_string());
    if outcome.succeeded() {
        set_phase(
            &mut status,
            Phase::Succeeded,
            "Completed",
            "training finished",
            generation,
        );
        save_status(&status_path, &status)?;
        let elapsed = started.elapsed();
        if config.eval_dataset.is_some() || config.val_size > 0.0 {
            view.println(
                "measuring held-out exact-match accuracy of the base model and the fine-tuned one",
            );
            measure_exact_match(&trainer, &pods[0], &config_file, &output_dir, &log_dir);
        }
        let summary = Summary::collect(&output_dir, &config, elapsed);
        job.status = Some(status);
        finish(opts, &job)?;
        return Ok(LocalOutcome {
            job,
            summary: Some(summary),
            workdir,
        });
    }
    if outcome.interrupted {
        status.failure = Some(FailureRecord {
            reason: FailureReason::Preempted,
            rank: None,
            pod: None,
            node: None,
            exit_code: outcome
                .exit_codes
                .iter()
                .flatten()
                .copied()
                .find(|c| *c != 0),
            message: "stopped by the user".into(),
            hint: Some("run the same command again to resume from the last checkpoint".into()),
        });
        set_phase(
            &mut status,
            Phase::Suspended,
            "Interrupted",
            "stopped; resumes from the last checkpoint",
            generation,
        );
        save_status(&status_path, &status)?;
        return Err(LocalError::Interrupted);
    }
    let pod = outcome.first_failure.unwrap_or(0);
    let code = outcome.exit_codes.get(pod as usize).copied().flatten();
    let log = outcome.logs.get(pod as usize).cloned().unwrap_or_default();
    let reason = code.map_or(FailureReason::Runtime, FailureReason::from_exit_code);
    status.failure = Some(FailureRecord {
        reason,
        rank: Some(pod),
        pod: Some(format!(
            "{}-{pod}",
            rendered.job.metadata.name.clone().unwrap_or_default()
        )),
        node: None,
        exit_code: code,
        message: tail(&log, 1),
        hint: None,
    });
    set_phase(
        &mut status,
        Phase::Failed,
        &format!("{reason:?}"),
        "training failed",
        generation,
    );
    save_status(&status_path, &status)?;
    Err(LocalError::Failed {
        pod,
        code: code.map_or_else(|| "signal".to_string(), |c| c.to_string()),
        tail: tail(&log, 15),
        log,
    })
}

/// A later attempt of an interrupted or failed run: the conditions that ended the previous one
/// turn `False`, as the operator's do when a job resumes (their `lastTransitionTime` moves).
fn resume(status: &mut FineTuneJobStatus, attempt: u32, generation: Option<i64>) {
    if attempt == 1 {
        return;
    }
    let msg = format!("attempt {attempt} resumes from the last checkpoint");
    for (type_, reason) in [(types::SUSPENDED, "Resumed"), (types::FAILED, "Retried")] {
        if conditions::is_true(&status.conditions, type_) {
            conditions::set(
                &mut status.conditions,
                type_,
                false,
                reason,
                &msg,
                generation,
            );
        }
    }
    status.completion_time = None;
}

/// Runs `lf-trainer eval --exact-match` without and with the adapter; failures only leave the
/// accuracy out of the summary (the training result stands), with the log kept.
fn measure_exact_match(
    trainer: &Path,
    pod: &crate::pods::LocalPod,
    config_file: &Path,
    output_dir: &Path,
    log_dir: &Path,
) {
    let adapter = format!("adapter_name_or_path={}", output_dir.display());
    for (label, extra) in [("base", None), ("", Some(adapter.as_str()))] {
        let suffix = if label.is_empty() {
            String::new()
        } else {
            format!("-{label}")
        };
        let log_path = log_dir.join(format!("eval-exact-match{suffix}.log"));
        let Ok(log) = std::fs::File::create(&log_path) else {
            continue;
        };
        let mut cmd = std::process::Command::new(trainer);
        cmd.arg("eval")
            .arg("--exact-match")
            .arg(label)
            .arg(config_file);
        if let Some(e) = extra {
            cmd.arg(e);
        }
        cmd.envs(&pod.env)
            .env_remove(lf_api::runtime::env::STATUS_FILE)
            .stdin(std::process::Stdio::null());
        if let Ok(err) = log.try_clone() {
            cmd.stdout(log).stderr(err);
        }
        match cmd.status() {
            Ok(s) if s.success() => {}
            _ => tracing::warn!("exact-match evaluation failed; see {}", log_path.display()),
        }
    }
}

/// The step of the newest `checkpoint-N` directory with the trainer's completion marker.
fn newest_complete_checkpoint(output_dir: &Path) -> Option<u64> {
    std::fs::read_dir(output_dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("checkpoint_complete.json").is_file())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("checkpoint-")?
                .parse()
                .ok()
        })
        .max()
}

fn finish(opts: &LocalOptions, job: &FineTuneJob) -> Result<(), LocalError> {
    if let Some(path) = &opts.status_out {
        let text = serde_yaml::to_string(job).unwrap_or_default();
        write(path, &text)?;
    }
    Ok(())
}

fn save_status(path: &Path, status: &FineTuneJobStatus) -> Result<(), LocalError> {
    write(path, &serde_yaml::to_string(status).unwrap_or_default())
}

fn write(path: &Path, text: &str) -> Result<(), LocalError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| LocalError::Write {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, text).map_err(|source| LocalError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The `lf-trainer` binary: `--trainer`, `LF_TRAINER`, next to this executable, or on the PATH.
pub fn find_trainer(opts: &LocalOptions) -> Result<PathBuf, LocalError> {
    let candidate = opts
        .trainer
        .clone()
        .or_else(|| std::env::var_os("LF_TRAINER").map(PathBuf::from))
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join("lf-trainer")))
        })
        .unwrap_or_else(|| PathBuf::from("lf-trainer"));
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(LocalError::NoTrainer(candidate))
    }
}

/// A free TCP port on 127.0.0.1 for the rendezvous.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(29500)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_attempt_ends_the_previous_ones_conditions_and_keeps_the_others() {
        let mut status = FineTuneJobStatus::default();
        set_phase(&mut status, Phase::Planning, "Planned", "1 GPU", None);
        set_phase(&mut status, Phase::Running, "PodsRunning", "running", None);
        set_phase(
            &mut status,
            Phase::Suspended,
            "Interrupted",
            "stopped",
            None,
        );
        let planned_at = conditions::get(&status.conditions, types::PLANNED)
            .unwrap()
            .last_transition_time
            .clone();
        resume(&mut status, 2, None);
        set_phase(&mut status, Phase::Planning, "Planned", "1 GPU", None);
        assert!(!conditions::is_true(&status.conditions, types::SUSPENDED));
        assert_eq!(
            conditions::get(&status.conditions, types::PLANNED)
                .unwrap()
                .last_transition_time,
            planned_at,
            "an unchanged condition keeps its lastTransitionTime"
        );
        assert!(status.completion_time.is_none());
    }
}
