//! [`DataParallel`] over lf-dist's c10d process group (plain data parallelism: every rank holds
//! the full trainable parameters and optimiser state; gradients are summed after each step's
//! micro-batches, or with `overlap_comm` unit by unit during the last one's backward:
//! [`ReplicatedStep`]).

use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use lf_dist::{ProcessGroup, RendezvousOptions};
use tch::{Device, Tensor};

use crate::error::TrainerError;
use crate::grad_reduce::GradientReducer;
use crate::gradients::{self, bucket_elements};
use crate::interfaces::{DataParallel, OptimizerBytes, RestoredState, StepOptimizer};

pub use crate::error::dist_error;

/// A process group joined from the environment (`MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`,
/// `RANK`), or `None` when `WORLD_SIZE` is unset or 1.
pub fn join_from_env(device: Device, timeout: Duration) -> Result<Option<DistGroup>, TrainerError> {
    let world: usize = std::env::var(lf_api::runtime::env::WORLD_SIZE)
        .ok()
        .and_then(|w| w.trim().parse().ok())
        .unwrap_or(1);
    if world <= 1 {
        return Ok(None);
    }
    let opts = RendezvousOptions::from_env(timeout).map_err(dist_error)?;
    let pg = ProcessGroup::new(&opts, device).map_err(dist_error)?;
    tracing::info!(
        rank = pg.rank(),
        world_size = pg.world_size(),
        "joined the process group"
    );
    Ok(Some(DistGroup {
        pg: Rc::new(pg),
        device,
        bucket: bucket_elements(),
    }))
}

/// The group as the training loop uses it.
pub struct DistGroup {
    pg: Rc<ProcessGroup>,
    device: Device,
    /// Elements per gradient bucket (read once: every rank must cut the same buckets).
    bucket: usize,
}

impl DistGroup {
    /// The process group, shared with a ZeRO optimiser.
    pub fn process_group(&self) -> Rc<ProcessGroup> {
        self.pg.clone()
    }
}

/// Plain data parallelism's optimiser: `inner` updates every parameter from gradients that
/// `reducer` summed over the ranks (waiting for the buckets backward started, `overlap_comm`).
pub struct ReplicatedStep {
    pub inner: Box<dyn StepOptimizer>,
    pub reducer: Rc<GradientReducer>,
}

impl StepOptimizer for ReplicatedStep {
    fn step(&mut self, params: &[(String, Tensor)], lr: f64) -> Result<(), TrainerError> {
        self.inner.step(params, lr)
    }
    fn state_bytes(&self) -> Option<OptimizerBytes> {
        self.inner.state_bytes()
    }
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.inner.state_tensors()
    }
    fn load_state_tensors(&mut self, state: Vec<(String, Tensor)>) -> Result<(), TrainerError> {
        self.inner.load_state_tensors(state)
    }
    fn gradient_bytes(&self, params: &[(String, Tensor)]) -> Option<u64> {
        self.inner.gradient_bytes(params)
    }
    fn partition(&self) -> (u8, usize) {
        self.inner.partition()
    }
    fn reduce_gradients(
        &mut self,
        _group: &dyn DataParallel,
        params: &[(String, Tensor)],
    ) -> Result<f64, TrainerError> {
        self.reducer.reduce()?;
        Ok(gradients::grad_norm(params))
    }
    fn clip_gradients(
        &mut self,
        params: &[(String, Tensor)],
        norm: f64,
        max_norm: f64,
    ) -> Result<(), TrainerError> {
        self.inner.clip_gradients(params, norm, max_norm)
    }
    fn state_file(&self) -> String {
        self.inner.state_file()
    }
    fn state_files(&self) -> Vec<String> {
        self.inner.state_files()
    }
    fn partitioned(&self) -> bool {
        self.inner.partitioned()
    }
    fn restore_state(&mut self, dir: &Path) -> Result<RestoredState, TrainerError> {
        self.inner.restore_state(dir)
    }
}

impl DataParallel for DistGroup {
    fn rank(&self) -> usize {
        self.pg.rank()
    }

    fn world_size(&self) -> usize {
        self.pg.world_size()
    }

    fn sum_scalar(&self, value: f64) -> Result<f64, TrainerError> {
        let mut t = Tensor::from_slice(&[value]).to_device(self.device);
        self.pg.all_reduce_sum(&mut t).map_err(dist_error)?;
        t.f_double_value(&[0])
            .map_err(|e| TrainerError::runtime(e.to_string()))
    }

    /// Gradients are summed in buckets of at most [`bucket_elements`] consecutive elements (the
    /// planner's bucket): each bucket's gradients are copied into one flat fp32 buffer, summed
    /// over ranks in one all-reduce, and copied back ([`GradientReducer`]). Fewer, larger
    /// collectives than one per tensor, and never a second fp32 copy of every gradient at once.
    fn sum_gradients(&self, params: &[(String, Tensor)]) -> Result<(), TrainerError> {
        GradientReducer::replicated(self.pg.clone(), params, self.bucket, None)?.reduce()
    }

    fn barrier(&self) -> Result<(), TrainerError> {
        self.pg.barrier().map_err(dist_error)
    }
}
