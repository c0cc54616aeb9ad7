//! [`DataParallel`] over lf-dist's c10d process group (plain data parallelism: every rank holds
//! the full trainable parameters and optimiser state; gradients are summed after each step's
//! micro-batches).

use std::rc::Rc;
use std::time::Duration;

use lf_api::runtime::FailureReason;
use lf_dist::{DistError, ProcessGroup, RendezvousOptions};
use tch::{Device, Kind, Tensor};

use crate::error::TrainerError;
use crate::gradients::{bucket_elements, buckets};
use crate::interfaces::DataParallel;

/// Maps an lf-dist error onto the trainer's classes (lf-dist knows which are configuration
/// mistakes and which are communication failures).
pub fn dist_error(e: DistError) -> TrainerError {
    match e.failure_reason() {
        FailureReason::ConfigError => TrainerError::config(e.to_string()),
        FailureReason::Communication => TrainerError::Communication {
            message: e.to_string(),
        },
        _ => TrainerError::runtime(e.to_string()),
    }
}

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
    /// planner's bucket): each bucket's gradients are copied into one flat fp32
    /// buffer, summed over ranks in one all-reduce, and copied back. Fewer, larger collectives
    /// than one per tensor, and never a second fp32 copy of every gradient at once.
    fn sum_gradients(&self, params: &[(String, Tensor)]) -> Result<(), TrainerError> {
        // A parameter without a gradient on this rank (no label in its micro-batches) still takes
        // part: backpropagating zero through it defines a zero `.grad`.
        for (_, p) in params {
            if !p.grad().defined() {
                (p.sum(Kind::Float) * 0.0).backward();
            }
        }
        let _guard = tch::no_grad_guard();
        let grads: Vec<Tensor> = params.iter().map(|(_, p)| p.grad()).collect();
        let numels: Vec<usize> = grads.iter().map(|g| g.numel()).collect();
        for range in buckets(&numels, self.bucket) {
            let flat: Vec<Tensor> = grads[range.clone()]
                .iter()
                .map(|g| g.to_kind(Kind::Float).reshape([-1]))
                .collect();
            let mut buffer = Tensor::cat(&flat, 0);
            drop(flat);
            self.pg.all_reduce_sum(&mut buffer).map_err(dist_error)?;
            let mut offset = 0;
            for g in &grads[range] {
                let n = g.numel() as i64;
                let mut g = g.shallow_clone();
                g.copy_(
                    &buffer
                        .narrow(0, offset, n)
                        .reshape(g.size())
                        .to_kind(g.kind()),
                );
                offset += n;
            }
        }
        Ok(())
    }

    fn barrier(&self) -> Result<(), TrainerError> {
        self.pg.barrier().map_err(dist_error)
    }
}
