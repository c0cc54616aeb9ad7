//! `profile_steps`: libtorch's profiler records the chosen optimiser steps of every process into
//! `output_dir/profile/trace-rank<R>.json` (Chrome/Perfetto format, each step a `ProfilerStep#N`
//! range) and summarises them in `summary-rank<R>.txt` — the top operators by self time, the split
//! of the step the loop measured, and a hint naming what dominates; rank 0 logs its summary. The
//! profiler never stops a run: if it cannot start or save, a warning says why and training goes on.

use std::path::PathBuf;

use lf_api::training::TrainingConfig;
use lf_profile::summary::{summarize_file, PhaseSplit};
use lf_profile::{Range, Session};
use tch::Device;

use crate::error::TrainerError;
use crate::report::StepOutcome;

/// The profiler around the loop's steps.
pub struct StepProfiler {
    window: Option<(u64, u64)>,
    dir: PathBuf,
    rank: usize,
    cuda: bool,
    session: Option<Session>,
    range: Option<Range>,
    split: PhaseSplit,
}

impl StepProfiler {
    pub fn new(
        cfg: &TrainingConfig,
        output_dir: &std::path::Path,
        rank: usize,
        device: Device,
    ) -> Result<Self, TrainerError> {
        let window = cfg
            .profile_window()
            .map_err(|e| TrainerError::config(e.to_string()))?;
        Ok(StepProfiler {
            window,
            dir: output_dir.join("profile"),
            rank,
            cuda: device.is_cuda(),
            session: None,
            range: None,
            split: PhaseSplit::default(),
        })
    }

    fn in_window(&self, step: u64) -> Option<(u64, u64)> {
        self.window
            .filter(|(first, last)| (*first..=*last).contains(&step))
    }

    /// Before step `step` (1-based): starts the profiler at the window's first step and marks
    /// the step.
    pub fn before(&mut self, step: u64) {
        let Some((first, _)) = self.in_window(step) else {
            return;
        };
        if step == first {
            match Session::start(self.cuda) {
                Ok(s) => self.session = Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "profile_steps: the profiler did not start; training goes on without it")
                }
            }
        }
        if let Some(s) = &self.session {
            self.range = Some(s.range(&format!("ProfilerStep#{step}")));
        }
    }

    /// After step `step`: ends its mark, counts its phases, and at the window's last step saves
    /// the trace and the summary.
    pub fn after(&mut self, step: u64, outcome: &StepOutcome) {
        self.range = None;
        let Some((first, last)) = self.in_window(step) else {
            return;
        };
        self.split.data += outcome.data_secs;
        self.split.forward_backward += outcome.compute_secs;
        self.split.optimizer += outcome.optimizer_secs;
        if step != last {
            return;
        }
        if let Some(session) = self.session.take() {
            if let Err(e) = self.save(session, first, last) {
                tracing::warn!(error = %e, "profile_steps: the profile was not saved; training goes on");
            }
        }
    }

    fn save(&self, session: Session, first: u64, last: u64) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let trace = self.dir.join(format!("trace-rank{}.json", self.rank));
        session.save(&trace).map_err(|e| e.to_string())?;
        let summary = summarize_file(&trace, self.split).map_err(|e| e.to_string())?;
        let text = format!("steps {first}-{last}, rank {}\n{summary}\n", self.rank);
        let path = self.dir.join(format!("summary-rank{}.txt", self.rank));
        std::fs::write(&path, &text)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if self.rank == 0 {
            tracing::info!(trace = %trace.display(), "profile of steps {first}-{last}:\n{summary}");
        }
        Ok(())
    }
}
