//! The FineTuneJob status: phase, conditions, plan, progress, checkpoints, restarts, failure.
//!
//! Two writers share it through server-side apply, each with its own field manager: the operator
//! owns phase, conditions, plan, restarts, failure and times; the trainer (rank 0) owns progress,
//! checkpoints and the measured memory.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::plan::Plan;
use crate::runtime::FailureReason;
use crate::training::{FinetuningType, TrainingConfig};

/// Field manager of the operator's status writes.
pub const OPERATOR_FIELD_MANAGER: &str = "lf-operator";
/// Field manager of the trainer's status writes.
pub const TRAINER_FIELD_MANAGER: &str = "lf-trainer";

/// Lifecycle phase.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Phase {
    /// Accepted; waiting to be planned or for every pod of the gang to run.
    #[default]
    Pending,
    /// The memory planner is choosing GPUs and ZeRO stage.
    Planning,
    Running,
    Succeeded,
    Failed,
    Suspended,
}

impl Phase {
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Planning => "Planning",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Suspended => "Suspended",
        }
    }
}

/// A condition in the standard Kubernetes shape.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Planned`, `Ready` (every pod running), `Succeeded`, `Failed`, `Suspended`, `Resumed`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Training progress, written by the trainer's rank 0.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub step: u64,
    pub total_steps: u64,
    /// `step/totalSteps`, for the `Step` column.
    pub step_display: String,
    pub epoch: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    /// Peak device memory measured on rank 0 (bytes), to compare with the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_peak_bytes: Option<u64>,
    /// Bus bandwidth of the pre-flight all-reduce (GB/s), multi-process jobs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus_bandwidth_gbps: Option<f64>,
    /// Set when this attempt could not resume from the checkpoint it was given (lost,
    /// half-written, failing verification) and resumed from an older valid one: which, and why.
    /// The operator shows it as the `ResumeFallback` condition and a Warning Event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_warning: Option<String>,
    /// Percent of the total steps done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_complete: Option<f64>,
    /// The training time left at the recent step rate, as of `updatedAt` (e.g. `1h02m`; the `ETA`
    /// column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<String>,
    /// When training should finish at the recent step rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_completion_time: Option<Time>,
    /// `stage: dpo` and `kto`: the last logging window's preference metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<PreferenceProgress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
}

/// A preference run's metrics over a logging window, per pair (TRL's `rewards/chosen`,
/// `rewards/rejected`, `rewards/accuracies`, `rewards/margins`, `logps/chosen`, `logps/rejected`;
/// `stage: kto`: per desirable or undesirable example, and `kl` instead of the accuracies).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreferenceProgress {
    /// β × the policy/reference log-ratio of the chosen answers (β × their mean log-probability
    /// for the reference-free losses).
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    /// The share of pairs whose chosen reward is above the rejected one (not for `stage: kto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewards_accuracies: Option<f64>,
    pub rewards_margins: f64,
    /// The policy's summed (reference-free losses: mean) log-probability of the chosen answers.
    pub logps_chosen: f64,
    pub logps_rejected: f64,
    /// `stage: kto`: the KL estimate (the mismatched sequences' policy/reference log-ratio,
    /// clamped at 0), averaged over the micro-batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
}

impl Progress {
    pub fn step_display(step: u64, total: u64) -> String {
        format!("{step}/{total}")
    }

    /// A duration as the `ETA` column shows it: `45s`, `12m30s`, `3h07m`, `2d04h`.
    pub fn remaining_display(seconds: f64) -> String {
        let s = seconds.max(0.0).round() as u64;
        let (d, h, m) = (s / 86_400, (s / 3600) % 24, (s / 60) % 60);
        match () {
            _ if d > 0 => format!("{d}d{h:02}h"),
            _ if h > 0 => format!("{h}h{m:02}m"),
            _ if m > 0 => format!("{m}m{:02}s", s % 60),
            _ => format!("{s}s"),
        }
    }
}

/// A checkpoint that was written completely.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointRecord {
    pub step: u64,
    pub path: String,
    pub saved_at: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
}

/// One restart of the gang.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartRecord {
    /// The new attempt's number (the first run is attempt 1).
    pub attempt: u32,
    pub reason: FailureReason,
    /// The checkpoint step the attempt resumes from (none: from scratch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from_step: Option<u64>,
    /// Whether it used the restart budget (preemptions do not).
    pub counted: bool,
    pub at: Time,
}

/// How many restarts there were, by kind (`restarts` keeps only the most recent records).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartTotals {
    /// Restarts that used `spec.runPolicy.maxRestarts`.
    pub counted: u32,
    /// Restarts after a preemption, eviction for node pressure or node drain (capped too).
    pub free: u32,
}

/// The most recent restart records `status.restarts` keeps; `status.restartTotals` counts all.
pub const RESTART_RECORDS_KEPT: usize = 10;

/// The last failure.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureRecord {
    pub reason: FailureReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The observed state of a FineTuneJob.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FineTuneJobStatus {
    #[serde(default)]
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The training method (`lora`, `qlora-4bit`, `dora`, `full`...), for the `Method` column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The plan in force (GPUs, ZeRO stage, batch, predicted memory per GPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// The current attempt (1 for the first run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<CheckpointRecord>,
    /// The batch prediction's metrics when `do_predict` ran (`predict_bleu-4`,
    /// `predict_rouge-1`, `predict_rouge-2`, `predict_rouge-l`, runtime and throughput), as
    /// `predict_results.json` holds them; written by the trainer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predict: Option<std::collections::BTreeMap<String, f64>>,
    /// The most recent restarts ([`RESTART_RECORDS_KEPT`] at most).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarts: Vec<RestartRecord>,
    /// All restarts so far, counted by kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_totals: Option<RestartTotals>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The server of the result (`spec.serve`), once the job has Succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<crate::serving::ServingStatus>,
    /// Where the result is (`pvc://<claim>/<path>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// A one-line human summary of the current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl FineTuneJobStatus {
    /// The newest recorded checkpoint.
    pub fn latest_checkpoint(&self) -> Option<&CheckpointRecord> {
        self.checkpoints.iter().max_by_key(|c| c.step)
    }

    /// All restarts so far: the totals, or (for a status written before there were totals) what
    /// the records show, whichever is larger.
    pub fn restart_totals(&self) -> RestartTotals {
        let recorded = |counted: bool| {
            self.restarts
                .iter()
                .filter(|r| r.counted == counted)
                .count()
        };
        let totals = self.restart_totals.unwrap_or_default();
        RestartTotals {
            counted: totals.counted.max(recorded(true) as u32),
            free: totals.free.max(recorded(false) as u32),
        }
    }

    /// Restarts that used the budget.
    pub fn counted_restarts(&self) -> u32 {
        self.restart_totals().counted
    }

    /// Records a restart: the totals grow, the records keep the most recent.
    pub fn record_restart(&mut self, record: RestartRecord) {
        let mut totals = self.restart_totals();
        if record.counted {
            totals.counted += 1;
        } else {
            totals.free += 1;
        }
        self.restart_totals = Some(totals);
        self.restarts.push(record);
        let excess = self.restarts.len().saturating_sub(RESTART_RECORDS_KEPT);
        self.restarts.drain(..excess);
    }
}

/// `lora`, `dora`, `rslora`, `qlora-4bit`, `qlora-8bit`, `full`, `freeze`.
pub fn method_label(t: &TrainingConfig) -> String {
    match t.finetuning_type {
        FinetuningType::Full => "full".into(),
        FinetuningType::Freeze => "freeze".into(),
        FinetuningType::Lora => {
            let base = if t.use_dora {
                "dora"
            } else if t.use_rslora {
                "rslora"
            } else {
                "lora"
            };
            match t.quantization_bit {
                Some(bits) => format!("q{base}-{bits}bit"),
                None => base.into(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn remaining_time_reads_at_a_glance() {
        let cases = [
            (0.4, "0s"),
            (45.0, "45s"),
            (750.0, "12m30s"),
            (3600.0, "1h00m"),
            (11_220.0, "3h07m"),
            (187_200.0, "2d04h"),
            (-5.0, "0s"),
        ];
        for (secs, shown) in cases {
            assert_eq!(Progress::remaining_display(secs), shown, "{secs} s");
        }
    }
}
