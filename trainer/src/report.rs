//! One reporter for the loop: every step's outcome goes in, and at each logging step one record
//! goes out to every sink — `trainer_log.jsonl`, tracing (or the progress bar), Prometheus and the
//! FineTuneJob status — so the sinks cannot disagree. Checkpoints reach the status the same way.

use std::path::Path;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use lf_api::status::Progress;
use tch::Device;

use crate::checkpoint;
use crate::error::TrainerError;
use crate::memory_report::MemoryRecord;
use crate::metrics::Metrics;
use crate::outputs::{hms, peak_memory_bytes, LogRecord, StepTimes, TrainerLog};
use crate::preference::{PreferenceMetrics, PreferenceSums};
use crate::state::TrainerState;
use crate::status::StatusReporter;
use crate::system::SystemProbe;

/// Where the records go. Rank 0 writes them; the other ranks only keep the window's arithmetic.
pub struct Sinks<'a> {
    pub output_dir: &'a Path,
    pub device: Device,
    pub is_main: bool,
    pub status: Option<&'a StatusReporter>,
    pub metrics: Option<&'a Metrics>,
    /// Show an indicatif bar instead of a tracing line per record.
    pub progress_bar: bool,
    /// The pre-flight all-reduce bus bandwidth (GB/s), for the status.
    pub bus_bandwidth_gbps: Option<f64>,
    /// Why this attempt resumed from an older checkpoint than it was given, for the status.
    pub resume_warning: Option<String>,
    /// The experiment trackers (`report_to`).
    pub trackers: Option<&'a lf_track::Trackers>,
}

/// What one optimiser step did (losses and counts summed over the ranks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// The mean token loss of the step.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Non-padding tokens and examples of the step, over all ranks.
    pub tokens: u64,
    pub samples: u64,
    /// Seconds waiting for data, in forward + backward, and in the optimiser.
    pub data_secs: f64,
    pub compute_secs: f64,
    pub optimizer_secs: f64,
    /// The forward part of `compute_secs`, when the model tells it apart.
    pub forward_secs: Option<f64>,
    /// `stage: dpo`: the step's pair metrics, summed over its pairs and the ranks.
    pub preference: Option<PreferenceSums>,
}

/// The steps since the last record.
struct Window {
    loss: f64,
    steps: u64,
    tokens: u64,
    secs: f64,
    times: StepTimes,
    forward_known: bool,
    preference: PreferenceSums,
}

impl Window {
    fn new() -> Self {
        Window {
            loss: 0.0,
            steps: 0,
            tokens: 0,
            secs: 0.0,
            times: StepTimes::default(),
            forward_known: true,
            preference: PreferenceSums::default(),
        }
    }

    fn add(&mut self, s: &StepOutcome) {
        self.loss += s.loss;
        self.steps += 1;
        self.tokens += s.tokens;
        self.secs += s.data_secs + s.compute_secs + s.optimizer_secs;
        self.times.data += s.data_secs;
        self.times.forward_backward += s.compute_secs;
        self.times.optimizer += s.optimizer_secs;
        if let Some(p) = s.preference {
            self.preference += p;
        }
        match s.forward_secs {
            Some(f) => *self.times.forward.get_or_insert(0.0) += f,
            None => self.forward_known = false,
        }
    }

    /// The per-step means of the phases.
    fn mean_times(&self) -> StepTimes {
        let n = self.steps.max(1) as f64;
        let forward = self.times.forward.filter(|_| self.forward_known);
        StepTimes {
            data: self.times.data / n,
            forward_backward: self.times.forward_backward / n,
            forward: forward.map(|f| f / n),
            backward: forward.map(|f| (self.times.forward_backward - f) / n),
            optimizer: self.times.optimizer / n,
        }
    }
}

/// Fans the loop's records out to every sink (see the module docs).
pub struct StepReporter<'a> {
    sinks: Sinks<'a>,
    log: TrainerLog,
    logging_steps: u64,
    total_steps: u64,
    /// When this attempt started.
    started: Instant,
    /// When the previous record was sent, and its step: the recent step rate for the ETA.
    last_record: (Instant, u64),
    /// The system metrics for the trackers (CPU use over each logging window).
    system: Option<SystemProbe>,
    window: Window,
    /// The last outcome (its learning rate and gradient norm go into the record).
    last: Option<StepOutcome>,
    /// The memory record waiting for the next progress record (so the log starts with one).
    memory: Option<MemoryRecord>,
    /// `(step, loss)` of every record so far, earlier attempts included: the checkpoints' losses.
    losses: Vec<(u64, f64)>,
    bar: Option<indicatif::ProgressBar>,
}

impl<'a> StepReporter<'a> {
    /// Opens `trainer_log.jsonl` (a fresh run starts it anew; a run resumed after step
    /// `start_step` drops what the interrupted attempt logged past it) and sets up the sinks.
    pub fn open(
        sinks: Sinks<'a>,
        logging_steps: usize,
        total_steps: u64,
        start_step: u64,
        resumed: bool,
    ) -> Result<Self, TrainerError> {
        let log = TrainerLog::open(sinks.output_dir, !resumed)?;
        if resumed && sinks.is_main {
            log.truncate_after(start_step)?;
        }
        let losses = log
            .read_all()
            .iter()
            .filter_map(|r| r.loss.map(|l| (r.current_steps, l)))
            .collect();
        if let Some(m) = sinks.metrics {
            m.total_steps.set(total_steps as i64);
        }
        let bar = (sinks.progress_bar && sinks.is_main).then(|| {
            let bar = indicatif::ProgressBar::new(total_steps);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "[{bar:30.cyan/blue}] {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_position(start_step);
            bar
        });
        // Sampled once now, so the first record has a CPU percentage.
        let system = sinks.trackers.map(|_| {
            let probe = SystemProbe::new();
            probe.sample();
            probe
        });
        Ok(StepReporter {
            sinks,
            log,
            logging_steps: logging_steps.max(1) as u64,
            total_steps,
            started: Instant::now(),
            last_record: (Instant::now(), start_step),
            system,
            window: Window::new(),
            last: None,
            memory: None,
            losses,
            bar,
        })
    }

    /// Counts step `step` (1-based) into the window.
    pub fn step(&mut self, step: u64, outcome: &StepOutcome) {
        self.window.add(outcome);
        self.last = Some(*outcome);
        if let Some(b) = &self.bar {
            b.set_position(step);
            b.set_message(format!("loss {:.4} lr {:.2e}", outcome.loss, outcome.lr));
        }
    }

    /// Whether step `step` (1-based) is a logging step.
    pub fn due(&self, step: u64) -> bool {
        step.is_multiple_of(self.logging_steps) || step == self.total_steps
    }

    /// The model-state memory record, written after the next progress record.
    pub fn memory(&mut self, record: MemoryRecord) {
        self.memory = Some(record);
    }

    /// Publishes an evaluation loss at once (Prometheus); the next record carries it too.
    pub fn evaluated(&self, eval_loss: f64) {
        if let Some(m) = self.sinks.metrics {
            m.eval_loss.set(eval_loss);
        }
    }

    /// Sends one record of the window (the steps up to `state.global_step`) to every sink and
    /// starts a new window; returns the window's mean loss.
    /// `eval_preference`: an evaluation's preference metrics, logged under TRL's `eval_` names.
    pub fn record(
        &mut self,
        state: &TrainerState,
        eval_loss: Option<f64>,
        eval_preference: Option<PreferenceMetrics>,
    ) -> Result<f64, TrainerError> {
        let step = state.global_step;
        let mean_loss = self.window.loss / self.window.steps.max(1) as f64;
        let elapsed = self.started.elapsed().as_secs_f64();
        let remaining = self.remaining_secs(step);
        self.last_record = (Instant::now(), step);
        let throughput = self.window.tokens as f64 / self.window.secs.max(1e-9);
        let peak = peak_memory_bytes(self.sinks.device);
        let (lr, grad_norm) = self.last.map_or((0.0, 0.0), |s| (s.lr, s.grad_norm));
        let record = LogRecord {
            current_steps: step,
            total_steps: self.total_steps,
            loss: Some(mean_loss),
            eval_loss,
            lr: Some(lr),
            grad_norm: Some(grad_norm),
            epoch: (state.epoch * 100.0).round() / 100.0,
            percentage: (step as f64 / self.total_steps as f64 * 10000.0).round() / 100.0,
            elapsed_time: hms(elapsed),
            remaining_time: hms(remaining),
            throughput: Some((throughput * 100.0).round() / 100.0),
            total_tokens: Some(state.tokens_total),
            step_time: Some(self.window.mean_times()),
            peak_memory_bytes: peak,
            preference: self.window.preference.means(),
            eval_preference: eval_preference.map_or_else(Default::default, |m| m.eval_named()),
        };
        self.window = Window::new();
        if self.sinks.is_main {
            self.publish(&record, throughput, remaining, state.last_eval_loss)?;
        }
        Ok(mean_loss)
    }

    /// Seconds left at the recent step rate: the wall time per step since the previous record
    /// (evaluations and checkpoints included, as they recur), or since this attempt started.
    fn remaining_secs(&self, step: u64) -> f64 {
        let (since, from) = self.last_record;
        let steps = step.saturating_sub(from).max(1) as f64;
        since.elapsed().as_secs_f64() / steps * self.total_steps.saturating_sub(step) as f64
    }

    /// `record` to the log file, tracing, Prometheus and the status.
    fn publish(
        &mut self,
        record: &LogRecord,
        throughput: f64,
        remaining: f64,
        last_eval_loss: Option<f64>,
    ) -> Result<(), TrainerError> {
        let (step, loss) = (record.current_steps, record.loss.unwrap_or(0.0));
        let (lr, grad_norm) = (record.lr.unwrap_or(0.0), record.grad_norm.unwrap_or(0.0));
        self.log.append(record)?;
        let memory = self.memory.take();
        if let Some(memory) = &memory {
            self.log.append_memory(memory)?;
        }
        if let Some(t) = self.sinks.trackers {
            let mut scalars = serde_json::to_value(record)
                .map(|v| lf_track::scalars_of(&v))
                .unwrap_or_default();
            if let Ok(m) = serde_json::to_value(&memory) {
                scalars.extend(lf_track::scalars_of(&serde_json::json!({ "memory": m })));
            }
            if let Some(probe) = &self.system {
                scalars.extend(probe.sample().scalars());
            }
            t.scalars(step, scalars);
        }
        self.losses.push((step, loss));
        if self.bar.is_none() {
            tracing::info!(
                step,
                total = self.total_steps,
                loss = format!("{loss:.4}"),
                eval_loss = record.eval_loss.map(|e| format!("{e:.4}")),
                lr = format!("{lr:.3e}"),
                grad_norm = format!("{grad_norm:.3}"),
                tokens_per_s = format!("{throughput:.0}"),
                "progress"
            );
        }
        if let Some(m) = self.sinks.metrics {
            m.step.set(step as i64);
            m.loss.set(loss);
            m.learning_rate.set(lr);
            m.grad_norm.set(grad_norm);
            m.tokens_per_second.set(throughput);
            if let Some(p) = record.peak_memory_bytes {
                m.peak_memory_bytes.set(p as i64);
            }
            if let Some(p) = &record.preference {
                m.set_preference(p);
            }
        }
        if let Some(s) = self.sinks.status {
            let now = Timestamp::now();
            s.progress(Progress {
                step,
                total_steps: self.total_steps,
                step_display: Progress::step_display(step, self.total_steps),
                epoch: record.epoch,
                loss: Some(loss),
                eval_loss: last_eval_loss,
                learning_rate: Some(lr),
                tokens_per_second: Some(throughput),
                measured_peak_bytes: record.peak_memory_bytes,
                bus_bandwidth_gbps: self.sinks.bus_bandwidth_gbps,
                resume_warning: self.sinks.resume_warning.clone(),
                percent_complete: Some(record.percentage),
                remaining: Some(Progress::remaining_display(remaining)),
                estimated_completion_time: now
                    .checked_add(SignedDuration::from_secs(remaining.round() as i64))
                    .ok()
                    .map(Time),
                preference: record.preference.map(Into::into),
                updated_at: Some(Time(now)),
            });
        }
        Ok(())
    }

    /// A checkpoint was written at `path`: logged, and the status lists the checkpoints.
    pub fn checkpoint_saved(&self, path: &Path) {
        tracing::info!("saved {}", path.display());
        if let Some(s) = self.sinks.status {
            s.checkpoints(checkpoint::records(self.sinks.output_dir, &self.losses));
        }
    }

    /// The run finished: the bar completes.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }

    /// The run stops early: the bar stays where it is.
    pub fn abandon(&self) {
        if let Some(b) = &self.bar {
            b.abandon();
        }
    }
}
