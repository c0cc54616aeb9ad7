//! The `lf-operator` binary. Every error is printed as one line (`error: ...`) with a non-zero
//! exit code; nothing panics on bad input.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lf_operator::commands::{self, PlanFormat, PlanOptions};
use lf_operator::controller::policy::TenantPolicy;
use lf_operator::controller::ControllerConfig;
use lf_operator::from_llama_factory::NewOptions;
use lf_operator::lease::LeaseConfig;
use lf_operator::run::{self, RunOptions};

#[derive(Parser)]
#[command(
    name = "lf-operator",
    version,
    about = "Plans, renders and runs LLM fine-tuning jobs (FineTuneJob) on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the FineTuneJob CustomResourceDefinition generated from the code.
    Crdgen {
        /// Write it to crds/finetunejobs.yaml and charts/crds/finetunejobs.yaml under --root instead.
        #[arg(long)]
        write: bool,
        /// The repository root for --write.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// Plan a FineTuneJob's memory: GPUs, ZeRO stage, micro-batch and the predicted peak per GPU.
    ///
    /// `-o json` and `-o yaml` print one Plan, the shape of the FineTuneJob's status.plan: the
    /// chosen configuration, the one given by --gpus/--zero-stage, or, when nothing fits, the
    /// closest one tried (lowest peak). Its `fits` field says whether it fits.
    ///
    /// Exit status: 0 when the plan fits; 1 when it does not (the table or plan is still printed,
    /// and stderr has one line naming every option tried) or on an error (nothing on stdout).
    Plan {
        /// The FineTuneJob YAML file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: PlanFormat,
        /// Memory of one GPU in GiB (overrides spec.resources.gpuMemoryGib).
        #[arg(long = "gpu-memory", value_name = "GiB")]
        gpu_memory: Option<f64>,
        /// Evaluate exactly this many GPUs instead of searching (default with --zero-stage: maxGpus).
        #[arg(long)]
        gpus: Option<u32>,
        /// Evaluate exactly this ZeRO stage (0-3) instead of searching (default with --gpus: the
        /// job's fixed stage, else 0).
        #[arg(long = "zero-stage", value_parser = clap::value_parser!(u8).range(0..=3))]
        zero_stage: Option<u8>,
        /// Print instead the longest `cutoff_len` that fits one GPU as one sequence per
        /// micro-batch (ZeRO 0), with the recomputation and activation offload it takes.
        #[arg(long = "max-context", conflicts_with_all = ["gpus", "zero_stage", "output"])]
        max_context: bool,
    },
    /// Print every object the operator would create for a FineTuneJob, as one YAML stream.
    Render {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// The attempt to render (1 for the first run).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        attempt: u32,
        /// The trainer image for jobs without spec.image.
        #[arg(
            long,
            env = "LF_TRAINER_IMAGE",
            default_value = lf_operator::DEFAULT_TRAINER_IMAGE
        )]
        trainer_image: String,
    },
    /// Turn a LLaMA-Factory training YAML into a FineTuneJob, printed to stdout, and plan it.
    ///
    /// The YAML is parsed as `lf-trainer` parses it (the same errors for unknown or unsupported
    /// options; its notices go to stderr). `model_name_or_path` names the model; the model,
    /// dataset and output directories become PersistentVolumeClaims named `change-me-…` for you to
    /// fill in; `deepspeed` stays an inline object the planner honours. The planner's table goes
    /// to stderr, as `plan` prints it.
    ///
    /// Exit status: 0 when the plan fits; 1 when it does not or the model cannot be planned (the
    /// FineTuneJob is still printed) or on an error (nothing on stdout).
    New {
        /// The LLaMA-Factory YAML (e.g. examples/train_lora/llama3_lora_sft.yaml).
        #[arg(long = "from", value_name = "CONFIG.yaml")]
        from: PathBuf,
        /// Memory of one GPU in GiB (spec.resources.gpuMemoryGib).
        #[arg(long = "gpu-memory", value_name = "GiB")]
        gpu_memory: f64,
        /// The most GPUs the job may use (spec.resources.maxGpus; default: one node's worth).
        #[arg(long = "max-gpus")]
        max_gpus: Option<u32>,
        /// GPUs on one node (default: 8, or --max-gpus when fewer).
        #[arg(long = "gpus-per-node")]
        gpus_per_node: Option<u32>,
        /// metadata.name (default: from the file's name, e.g. llama3-lora-sft).
        #[arg(long)]
        name: Option<String>,
        /// metadata.namespace (default: none, kubectl's current namespace).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Run a FineTuneJob on this machine: the same plan and rendered pods, as local processes.
    Local {
        /// The FineTuneJob YAML file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Map a PersistentVolumeClaim to a local directory (CLAIM=PATH; repeatable). Unmapped claims
        /// are `<job file's directory>/<claim>` when that exists, else `<workdir>/volumes/<claim>`.
        #[arg(long = "volume", value_name = "CLAIM=PATH")]
        volumes: Vec<String>,
        /// Where config, logs, status and unmapped volumes go (default lf-local/<job name>).
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// The lf-trainer binary (default: next to lf-operator).
        #[arg(long, env = "LF_TRAINER")]
        trainer: Option<PathBuf>,
        /// Worker processes per pod (world size = pods × this).
        #[arg(long = "nproc-per-node")]
        nproc_per_node: Option<u32>,
        /// Use exactly this many processes in all (pods × --nproc-per-node) with the job's fixed
        /// ZeRO stage, instead of the planner's fewest-that-fit (e.g. to try a multi-pod layout).
        #[arg(long)]
        gpus: Option<u32>,
        /// Also write the final FineTuneJob (with status) as YAML to this file.
        #[arg(long = "status-out")]
        status_out: Option<PathBuf>,
        /// Then serve the result (`lf-trainer serve`: OpenAI API, /generate, /health) on
        /// 127.0.0.1:PORT (default 8000) until Ctrl-C; a job that already succeeded is served
        /// without training again.
        #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "8000")]
        serve: Option<u16>,
    },
    /// Run the controller (in-cluster, or with KUBECONFIG / ~/.kube/config).
    Run {
        /// Where /metrics, /healthz and /readyz are served.
        #[arg(
            long = "http-addr",
            env = "LF_HTTP_ADDR",
            default_value = "0.0.0.0:8080"
        )]
        http_addr: SocketAddr,
        /// The trainer image for jobs without spec.image.
        #[arg(
            long,
            env = "LF_TRAINER_IMAGE",
            default_value = lf_operator::DEFAULT_TRAINER_IMAGE
        )]
        trainer_image: String,
        /// Allow service-mesh sidecar injection into trainer pods by default (true|false).
        #[arg(long, env = "LF_SIDECAR_INJECTION_DEFAULT", default_value_t = false, action = clap::ArgAction::Set)]
        sidecar_injection_default: bool,
        /// Elect a leader through a coordination.k8s.io Lease (true|false; needed with more than one replica).
        #[arg(long, env = "LF_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
        leader_election: bool,
        /// Namespace of the Lease (default: the pod's namespace, POD_NAMESPACE, else `default`).
        #[arg(long, env = "LF_LEASE_NAMESPACE")]
        lease_namespace: Option<String>,
        /// Name of the Lease.
        #[arg(long, env = "LF_LEASE_NAME", default_value = "lf-operator-leader")]
        lease_name: String,
        /// Log format: json (default when stderr is not a terminal) or text.
        #[arg(long, env = "LF_LOG_FORMAT", value_parser = ["json", "text"])]
        log_format: Option<String>,
        /// Who may scrape trainer pods' metrics besides the job's own pods: a JSON list of
        /// NetworkPolicy peers, e.g. `[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]`.
        #[arg(long, env = "LF_TRAINER_METRICS_FROM", default_value = "[]")]
        trainer_metrics_from: String,
        /// Images spec.image may name (comma-separated; exact references or prefixes ending in
        /// `*`). Empty: any. The trainer image is always allowed.
        #[arg(
            long = "allowed-images",
            env = "LF_ALLOWED_IMAGES",
            value_delimiter = ',',
            default_value = ""
        )]
        allowed_images: Vec<String>,
        /// Priority classes spec.scheduling.priorityClassName may name (comma-separated). Empty: any.
        #[arg(
            long = "allowed-priority-classes",
            env = "LF_ALLOWED_PRIORITY_CLASSES",
            value_delimiter = ',',
            default_value = ""
        )]
        allowed_priority_classes: Vec<String>,
        /// Whether FineTuneJobs may set nodeSelector, tolerations, affinity and schedulerName (true|false).
        #[arg(long = "allow-placement", env = "LF_ALLOW_PLACEMENT", default_value_t = true, action = clap::ArgAction::Set)]
        allow_placement: bool,
        /// Watch only these namespaces (comma-separated; a namespace-scoped install, with Roles
        /// in each instead of a ClusterRole). Empty: the whole cluster.
        #[arg(
            long = "namespaces",
            env = "LF_WATCH_NAMESPACES",
            value_delimiter = ',',
            default_value = ""
        )]
        namespaces: Vec<String>,
    },
}

fn pod_namespace() -> Option<String> {
    std::env::var("POD_NAMESPACE").ok().or_else(|| {
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            .ok()
            .map(|s| s.trim().to_string())
    })
}

/// This process's leader-election identity: the pod's name and a suffix new with every process
/// (as controller-runtime does), so that a leader restarted in the same pod after a crash is a new
/// candidate, not the holder of the old lease.
fn lease_identity(pod: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{pod}_{:08x}", h.finish() as u32)
}

/// A comma-separated list without its empty items (an unset variable is one empty item).
fn non_empty(items: Vec<String>) -> Vec<String> {
    items
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    let line = lf_operator::load::one_line(&message.to_string());
    let _ = writeln!(std::io::stderr(), "error: {line}");
    ExitCode::FAILURE
}

fn print(text: &str) -> Result<(), std::io::Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen { write, root } => {
            if write {
                match commands::write_crds(&root) {
                    Ok(paths) => {
                        for p in paths {
                            eprintln!("wrote {}", p.display());
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                }
            } else {
                match commands::crd_yaml().map(|y| print(&y)) {
                    Ok(Ok(())) => ExitCode::SUCCESS,
                    Ok(Err(e)) => fail(e),
                    Err(e) => fail(e),
                }
            }
        }
        Command::Plan {
            file,
            output,
            gpu_memory,
            gpus,
            zero_stage,
            max_context,
        } => {
            let opts = PlanOptions {
                gpu_memory_gib: gpu_memory,
                gpus,
                zero_stage,
            };
            if max_context {
                return match commands::max_context_file(&file, &opts).map(|t| print(&t)) {
                    Ok(Ok(())) => ExitCode::SUCCESS,
                    Ok(Err(e)) => fail(e),
                    Err(e) => fail(e),
                };
            }
            let outcome = match commands::plan_file(&file, &opts) {
                Ok(o) => o,
                Err(e) => return fail(e),
            };
            match commands::plan_output(&file, &outcome, output) {
                Ok((text, failure)) => {
                    if let Err(e) = print(&text) {
                        return fail(e);
                    }
                    match failure {
                        Some(e) => fail(e),
                        None => ExitCode::SUCCESS,
                    }
                }
                Err(e) => fail(e),
            }
        }
        Command::Render {
            file,
            attempt,
            trainer_image,
        } => match commands::render_file(&file, attempt, &trainer_image) {
            Ok(yaml) => match print(&yaml) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            },
            Err(e) => fail(e),
        },
        Command::New {
            from,
            gpu_memory,
            max_gpus,
            gpus_per_node,
            name,
            namespace,
        } => {
            let opts = NewOptions {
                name,
                namespace,
                gpu_memory_gib: gpu_memory,
                max_gpus,
                gpus_per_node,
            };
            let outcome = match commands::new_from_file(&from, &opts) {
                Ok(o) => o,
                Err(e) => return fail(e),
            };
            let mut err = std::io::stderr().lock();
            for n in &outcome.notices {
                let _ = writeln!(err, "note: {n}");
            }
            if let Err(e) = print(&outcome.yaml) {
                return fail(e);
            }
            if let Some(table) = &outcome.plan_table {
                let _ = write!(err, "{table}");
            }
            drop(err);
            match outcome.plan_failure {
                Some(e) => fail(e),
                None => ExitCode::SUCCESS,
            }
        }
        Command::Local {
            file,
            volumes,
            workdir,
            trainer,
            nproc_per_node,
            gpus,
            status_out,
            serve,
        } => {
            let opts = lf_local::LocalOptions {
                job_file: file,
                volumes,
                workdir,
                trainer,
                nproc_per_node,
                gpus,
                status_out,
            };
            let finished = match lf_local::run(&opts) {
                Ok(outcome) => {
                    let status = serde_yaml::to_string(&outcome.job).unwrap_or_default();
                    let summary = outcome.summary.map(|s| s.to_string()).unwrap_or_default();
                    if let Err(e) = print(&format!(
                        "{status}---\n# {}\n",
                        summary.replace('\n', "\n# ")
                    )) {
                        return fail(e);
                    }
                    Ok(outcome.workdir)
                }
                Err(lf_local::LocalError::AlreadySucceeded { workdir, .. }) if serve.is_some() => {
                    Ok(workdir)
                }
                Err(e) => Err(e),
            };
            match (finished, serve) {
                (Ok(_), None) => ExitCode::SUCCESS,
                (Ok(workdir), Some(port)) => {
                    let served = lf_local::find_trainer(&opts).and_then(|trainer| {
                        let plan = lf_local::serve::serve_plan(&workdir)?;
                        lf_local::serve::serve(&trainer, &plan, port)
                    });
                    match served {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            let _ = writeln!(std::io::stderr(), "error: {e}");
                            ExitCode::FAILURE
                        }
                    }
                }
                (Err(e @ lf_local::LocalError::Interrupted), _) => {
                    let _ = writeln!(std::io::stderr(), "{e}");
                    ExitCode::from(130)
                }
                (Err(e), _) => {
                    let _ = writeln!(std::io::stderr(), "error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            http_addr,
            trainer_image,
            sidecar_injection_default,
            leader_election,
            lease_namespace,
            lease_name,
            log_format,
            trainer_metrics_from,
            allowed_images,
            allowed_priority_classes,
            allow_placement,
            namespaces,
        } => {
            let json = match log_format.as_deref() {
                Some("json") => true,
                Some(_) => false,
                None => !std::io::stderr().is_terminal(),
            };
            run::init_logging(json);
            let identity = lease_identity(
                &std::env::var("POD_NAME")
                    .or_else(|_| std::env::var("HOSTNAME"))
                    .unwrap_or_else(|_| "lf-operator".into()),
            );
            let lease = leader_election.then(|| {
                let ns = lease_namespace
                    .or_else(pod_namespace)
                    .unwrap_or_else(|| "default".into());
                LeaseConfig::new(&ns, &lease_name, &identity)
            });
            let trainer_metrics_from = match serde_json::from_str(&trainer_metrics_from) {
                Ok(peers) => peers,
                Err(e) => {
                    return fail(format!(
                        "--trainer-metrics-from (LF_TRAINER_METRICS_FROM) is not a JSON list of NetworkPolicy peers: {e}"
                    ))
                }
            };
            let controller = ControllerConfig {
                default_image: trainer_image,
                sidecar_injection_default,
                trainer_metrics_from,
                tenant_policy: TenantPolicy {
                    allowed_images: non_empty(allowed_images),
                    allowed_priority_classes: non_empty(allowed_priority_classes),
                    allow_placement,
                },
                namespaces: non_empty(namespaces),
                ..ControllerConfig::default()
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => return fail(format!("cannot start the async runtime: {e}")),
            };
            match runtime.block_on(run::run(RunOptions {
                metrics_addr: http_addr,
                controller,
                lease,
            })) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("{e:#}")),
            }
        }
    }
}
