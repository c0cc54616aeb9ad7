//! The end-of-run summary: losses, time, throughput, where the results are, and how to try them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lf_api::TrainingConfig;

/// What a finished local run reports.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub final_loss: Option<f64>,
    pub final_eval_loss: Option<f64>,
    pub best_eval_loss: Option<f64>,
    pub tokens_per_second: Option<f64>,
    pub elapsed: Duration,
    /// Held-out exact-match accuracy of the base model and of the fine-tuned one (when the trainer
    /// measured it: `eval_exact_match_base` / `eval_exact_match` in all_results.json).
    pub exact_match_before: Option<f64>,
    pub exact_match_after: Option<f64>,
    pub output_dir: PathBuf,
    pub plot: Option<PathBuf>,
    pub chat_command: String,
}

impl Summary {
    /// Reads `all_results.json` and `trainer_log.jsonl` from the output directory.
    pub fn collect(output_dir: &Path, config: &TrainingConfig, elapsed: Duration) -> Summary {
        let results: serde_json::Value =
            std::fs::read_to_string(output_dir.join("all_results.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
        let num = |k: &str| results.get(k).and_then(|v| v.as_f64());
        let log = std::fs::read_to_string(output_dir.join("trainer_log.jsonl")).unwrap_or_default();
        let records: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let best_eval_loss = records
            .iter()
            .filter_map(|r| r.get("eval_loss").and_then(|v| v.as_f64()))
            .min_by(|a, b| a.total_cmp(b));
        let last_train = records
            .iter()
            .rev()
            .find_map(|r| r.get("loss").and_then(|v| v.as_f64()));
        let throughput = records
            .iter()
            .rev()
            .find_map(|r| r.get("throughput").and_then(|v| v.as_f64()));
        let plot = output_dir.join("training_loss.png");
        Summary {
            final_loss: num("train_loss").or(last_train),
            final_eval_loss: num("eval_loss"),
            best_eval_loss,
            tokens_per_second: throughput,
            elapsed,
            exact_match_before: num("eval_exact_match_base"),
            exact_match_after: num("eval_exact_match"),
            output_dir: output_dir.to_path_buf(),
            plot: plot.is_file().then_some(plot),
            chat_command: chat_command(output_dir, config),
        }
    }
}

fn chat_command(output_dir: &Path, config: &TrainingConfig) -> String {
    let model = config.model_name_or_path.clone().unwrap_or_default();
    let template = config.template.clone().unwrap_or_else(|| "auto".into());
    format!(
        "lf-trainer chat --prompt 'What is the opposite of hot?' model_name_or_path={model} adapter_name_or_path={} template={template}",
        output_dir.display()
    )
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.digits$}"))
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Training finished in {:.1} s",
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "  train loss        {}", opt(self.final_loss, 4))?;
        writeln!(
            f,
            "  eval loss         {} (best {})",
            opt(self.final_eval_loss, 4),
            opt(self.best_eval_loss, 4)
        )?;
        writeln!(
            f,
            "  throughput        {} tokens/s",
            opt(self.tokens_per_second, 0)
        )?;
        if self.exact_match_before.is_some() || self.exact_match_after.is_some() {
            let pct = |v: Option<f64>| {
                v.map_or_else(|| "n/a".to_string(), |x| format!("{:.1}%", 100.0 * x))
            };
            writeln!(
                f,
                "  held-out accuracy {} before → {} after (exact match, greedy)",
                pct(self.exact_match_before),
                pct(self.exact_match_after)
            )?;
        }
        writeln!(f, "  adapter           {}", self.output_dir.display())?;
        if let Some(p) = &self.plot {
            writeln!(f, "  loss plot         {}", p.display())?;
        }
        write!(f, "Try it:\n  {}", self.chat_command)
    }
}
