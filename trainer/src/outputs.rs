//! The run's output files besides the weights: `trainer_log.jsonl` (one record per logging step,
//! LLaMA-Factory's keys plus ours, and once per attempt a `{"memory": ...}` line, see
//! [`crate::memory_report`]) and `all_results.json`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::adapters::model_error;
use crate::error::{is_storage_full, TrainerError};
use crate::memory_report::{MemoryLine, MemoryRecord};
use crate::preference::PreferenceMetrics;

pub const TRAINER_LOG: &str = "trainer_log.jsonl";
pub const ALL_RESULTS: &str = "all_results.json";
pub const TRAINER_STATE: &str = "trainer_state.json";
pub const LOSS_PLOT: &str = "training_loss.png";

/// Seconds of one optimiser step, by phase (averaged over the logging window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StepTimes {
    /// Waiting for the next batch and moving it to the device.
    pub data: f64,
    /// Forward and backward together (with layer recomputation they interleave).
    pub forward_backward: f64,
    /// The forward part alone, when the model reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<f64>,
    /// The backward part alone, when the model reports the forward part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backward: Option<f64>,
    /// Gradient clipping, the optimiser update and zeroing the gradients.
    pub optimizer: f64,
}

/// One line of `trainer_log.jsonl`. Optional fields are left out when absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub current_steps: u64,
    pub total_steps: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    pub epoch: f64,
    pub percentage: f64,
    pub elapsed_time: String,
    pub remaining_time: String,
    /// Training tokens (every non-padding input token) per second over the logging window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_time: Option<StepTimes>,
    /// Peak memory in bytes: the CUDA caching allocator's peak on GPU, the process's peak RSS on CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// `stage: dpo`: `rewards/*` and `logps/*`, means over the window's pairs.
    #[serde(flatten)]
    pub preference: Option<PreferenceMetrics>,
    /// An evaluation of a preference run: its metrics under TRL's names, `eval_rewards/chosen`
    /// and so on ([`PreferenceMetrics::eval_named`]).
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub eval_preference: BTreeMap<String, f64>,
}

/// `H:MM:SS`, as LLaMA-Factory writes elapsed and remaining time.
pub fn hms(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// Appends records to `trainer_log.jsonl`.
pub struct TrainerLog {
    path: PathBuf,
}

impl TrainerLog {
    /// Opens the log in `output_dir`; `fresh` truncates it (a run that does not resume).
    pub fn open(output_dir: &Path, fresh: bool) -> Result<Self, TrainerError> {
        let path = output_dir.join(TRAINER_LOG);
        if fresh && path.exists() {
            std::fs::remove_file(&path).map_err(|e| TrainerError::io("truncate", &path, e))?;
        }
        Ok(TrainerLog { path })
    }

    pub fn append(&self, record: &LogRecord) -> Result<(), TrainerError> {
        let line =
            serde_json::to_string(record).map_err(|e| TrainerError::runtime(e.to_string()))?;
        self.append_line(&line)
    }

    /// Appends a `{"memory": ...}` line (which [`TrainerLog::read_all`] and other readers of
    /// progress records skip: it has none of their keys).
    pub fn append_memory(&self, record: &MemoryRecord) -> Result<(), TrainerError> {
        let line = serde_json::to_string(&MemoryLine {
            memory: record.clone(),
        })
        .map_err(|e| TrainerError::runtime(e.to_string()))?;
        self.append_line(&line)
    }

    fn append_line(&self, line: &str) -> Result<(), TrainerError> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| TrainerError::io("open", &self.path, e))?;
        writeln!(f, "{line}").map_err(|e| {
            if is_storage_full(&e) {
                TrainerError::volume_full(&self.path, Some(line.len() as u64 + 1))
            } else {
                TrainerError::io("append to", &self.path, e)
            }
        })
    }

    /// Every record written so far (the plot reads them back, including those of earlier
    /// attempts of a resumed run).
    pub fn read_all(&self) -> Vec<LogRecord> {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Every `{"memory": ...}` record written so far (one per attempt).
    pub fn read_memory(&self) -> Vec<MemoryRecord> {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|l| serde_json::from_str::<MemoryLine>(l).ok())
            .map(|l| l.memory)
            .collect()
    }

    /// Drops records past `step` (a resumed run repeats no step, so later lines of the crashed
    /// attempt would be duplicates), memory records included; lines that are neither are dropped.
    /// The log is replaced atomically: a crash meanwhile leaves the old log whole.
    pub fn truncate_after(&self, step: u64) -> Result<(), TrainerError> {
        if !self.path.exists() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| TrainerError::io("read", &self.path, e))?;
        let mut kept = String::new();
        for line in text.lines() {
            let keep = if let Ok(r) = serde_json::from_str::<LogRecord>(line) {
                r.current_steps <= step
            } else if let Ok(m) = serde_json::from_str::<MemoryLine>(line) {
                m.memory.step <= step
            } else {
                false
            };
            if keep {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        write_atomic(&self.path, kept.as_bytes())
    }
}

/// Merges `values` into `output_dir/all_results.json` (train and eval results share the file, as
/// in Hugging Face's `save_metrics("all", ...)`), atomically and durably.
pub fn merge_results(
    output_dir: &Path,
    values: serde_json::Map<String, serde_json::Value>,
) -> Result<(), TrainerError> {
    let path = output_dir.join(ALL_RESULTS);
    let mut all: serde_json::Map<String, serde_json::Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    all.extend(values);
    let text =
        serde_json::to_string_pretty(&all).map_err(|e| TrainerError::runtime(e.to_string()))?;
    write_atomic(&path, text.as_bytes())
}

/// Replaces `path` with `bytes` atomically and durably (a crash leaves the old file or the new
/// one; a full volume is [`TrainerError::VolumeFull`] with the size needed).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainerError> {
    lf_model::durable::write_atomic(path, bytes).map_err(|e| model_error("writing outputs", e))
}

/// Peak resident set size of this process in bytes (`VmHWM`), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak memory of the training device: the CUDA caching allocator's peak when training on a GPU
/// (and the build can query it), the process peak RSS otherwise.
pub fn peak_memory_bytes(device: tch::Device) -> Option<u64> {
    match device {
        tch::Device::Cuda(i) => {
            lf_dist::cuda_peak_allocated_bytes(i as i64).or_else(peak_rss_bytes)
        }
        _ => peak_rss_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_time_like_llama_factory() {
        assert_eq!(hms(0.4), "0:00:00");
        assert_eq!(hms(3723.0), "1:02:03");
    }

    #[test]
    fn a_full_volume_under_the_log_is_volume_full_with_the_bytes_needed() {
        let dir = tempfile::tempdir().unwrap();
        // /dev/full answers every write with ENOSPC.
        std::os::unix::fs::symlink("/dev/full", dir.path().join(TRAINER_LOG)).unwrap();
        let log = TrainerLog::open(dir.path(), false).unwrap();
        let err = log.append(&LogRecord::default()).unwrap_err();
        assert_eq!(
            err.exit_code(),
            lf_api::runtime::exit_code::OUTPUT_VOLUME_FULL,
            "{err}"
        );
        assert!(err.to_string().contains("bytes needed at"), "{err}");
        // Rewritten files are replaced whole: the log after a truncation, the results.
        std::fs::remove_file(dir.path().join(TRAINER_LOG)).unwrap();
        log.append(&LogRecord::default()).unwrap();
        log.truncate_after(0).unwrap();
        merge_results(dir.path(), serde_json::Map::new()).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [ALL_RESULTS, TRAINER_LOG], "no temporary left");
    }

    #[test]
    fn log_round_trips_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let log = TrainerLog::open(dir.path(), true).unwrap();
        for s in 1..=4 {
            log.append(&LogRecord {
                current_steps: s,
                total_steps: 4,
                loss: Some(1.0 / s as f64),
                ..Default::default()
            })
            .unwrap();
        }
        let memory = |step| MemoryRecord {
            step,
            measured: Default::default(),
            planned: Default::default(),
            measured_peak_bytes: None,
            planned_peak_bytes: None,
        };
        log.append_memory(&memory(1)).unwrap();
        log.append_memory(&memory(3)).unwrap();
        assert_eq!(
            log.read_all().len(),
            4,
            "memory lines are not progress records"
        );
        log.truncate_after(2).unwrap();
        assert_eq!(
            log.read_memory(),
            vec![memory(1)],
            "memory lines past step 2 go too"
        );
        let back = log.read_all();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].loss, Some(0.5));
        let text = std::fs::read_to_string(dir.path().join(TRAINER_LOG)).unwrap();
        assert!(
            !text.contains("eval_loss"),
            "absent fields are left out: {text}"
        );
        merge_results(
            dir.path(),
            serde_json::json!({"train_loss": 1.5})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
        merge_results(
            dir.path(),
            serde_json::json!({"eval_loss": 2.0})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
        let all: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(ALL_RESULTS)).unwrap())
                .unwrap();
        assert_eq!(all["train_loss"], 1.5);
        assert_eq!(all["eval_loss"], 2.0);
        assert!(peak_rss_bytes().unwrap() > 1 << 20);
    }
}
