//! `lf-trainer train|eval|predict|chat|export|serve CONFIG.yaml [key=value ...]`.
//!
//! Exit codes follow `lf_api::runtime::exit_code`; on failure one clear line goes to stderr and,
//! inside a pod, a JSON termination report to `/dev/termination-log`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lf_trainer::{commands, error, setup, TrainerError};

#[derive(Parser, Debug)]
#[command(
    name = "lf-trainer",
    version,
    about = "LoRA-family fine-tuning of Llama-family models on libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train (LLaMA-Factory config keys; `key=value` overrides follow the file).
    Train {
        /// CONFIG.yaml (default: $LF_CONFIG) followed by key=value overrides.
        args: Vec<String>,
    },
    /// Loss and perplexity on the evaluation split, into all_results.json.
    Eval {
        /// Instead of the loss, measure greedy exact-match accuracy of the answers
        /// (`eval_exact_match`, or `eval_exact_match_<LABEL>` with a label such as `base`).
        #[arg(long = "exact-match", value_name = "LABEL", num_args = 0..=1, default_missing_value = "")]
        exact_match: Option<String>,
        args: Vec<String>,
    },
    /// Batch prediction without training (`train` with `do_predict: true, do_train: false`):
    /// answer the evaluation examples, write generated_predictions.jsonl and predict_results.json.
    Predict { args: Vec<String> },
    /// Chat with the model (and adapter) through its template.
    Chat {
        /// Answer this one prompt and exit.
        #[arg(long)]
        prompt: Option<String>,
        args: Vec<String>,
    },
    /// Merge the adapter into the base model and write a Hugging Face model to export_dir.
    Export { args: Vec<String> },
    /// Serve the model and its adapters (`adapter_name_or_path`, comma-separated) over HTTP:
    /// OpenAI-compatible /v1/chat/completions, /v1/completions, /v1/models; /generate, /health,
    /// /metrics.
    Serve {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// 0 picks a free port (printed as `listening on http://ADDR`).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Sequences decoded together; more requests wait in the queue.
        #[arg(long, default_value_t = 16)]
        max_running: usize,
        /// Requests that may wait; beyond it, 429 with Retry-After.
        #[arg(long, default_value_t = 64)]
        queue: usize,
        /// Most prompt tokens one sequence feeds per decoding step.
        #[arg(long, default_value_t = 256)]
        prefill_chunk: usize,
        /// Most KV-cache positions (prompt + max_tokens of each running sequence) held at once.
        #[arg(long)]
        max_kv_tokens: Option<usize>,
        args: Vec<String>,
    },
}

fn config(args: &[String]) -> Result<lf_api::TrainingConfig, TrainerError> {
    let (path, overrides) = setup::split_args(args);
    let path: Option<PathBuf> = path;
    setup::load_config(path.as_deref(), &overrides).map(|(cfg, _)| cfg)
}

/// The overrides that make a config predict without training.
const PREDICT_ONLY: [&str; 3] = [
    "do_train=false",
    "do_predict=true",
    "predict_with_generate=true",
];

fn run(cli: Cli) -> Result<(), TrainerError> {
    match cli.command {
        Command::Train { args } => commands::run_train(&config(&args)?),
        Command::Eval { exact_match, args } => {
            let results = commands::run_eval(&config(&args)?, exact_match.as_deref())?;
            println!(
                "{}",
                serde_json::to_string_pretty(&results).unwrap_or_default()
            );
            Ok(())
        }
        Command::Predict { mut args } => {
            args.extend(PREDICT_ONLY.map(String::from));
            lf_trainer::predict::predict_without_training(&config(&args)?)
        }
        Command::Chat { prompt, args } => commands::run_chat(&config(&args)?, prompt.as_deref()),
        Command::Serve {
            host,
            port,
            max_running,
            queue,
            prefill_chunk,
            max_kv_tokens,
            args,
        } => {
            let opts = lf_trainer::serve_command::ServeOptions {
                host,
                port,
                max_running,
                queue,
                prefill_chunk,
                max_kv_tokens,
            };
            lf_trainer::serve_command::run_serve(&config(&args)?, &opts)
        }
        Command::Export { args } => {
            let out = commands::run_export(&config(&args)?)?;
            eprintln!("exported the merged model to {}", out.display());
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let launched = match &cli.command {
        Command::Train { .. } => lf_trainer::launch::pod_launcher()
            .and_then(|l| l.map(|l| lf_trainer::launch::launch(&l)).transpose()),
        _ => Ok(None),
    };
    let result = match launched {
        Ok(Some(code)) => return ExitCode::from(code.clamp(0, 255) as u8),
        Ok(None) => run(cli),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let rank = std::env::var(lf_api::runtime::env::RANK)
                .ok()
                .and_then(|r| r.parse().ok());
            let last = match &e {
                TrainerError::Interrupted { checkpoint, .. } => *checkpoint,
                _ => None,
            };
            let report = e.report(rank, last);
            error::write_termination_log(&report);
            eprintln!("error: {e}");
            if let Some(h) = e.hint() {
                eprintln!("hint: {h}");
            }
            ExitCode::from(e.exit_code().clamp(0, 255) as u8)
        }
    }
}
