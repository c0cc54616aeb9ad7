//! The gradient reduction of data parallelism (ZeRO 0) and ZeRO stages 1–2, bucket by bucket.
//!
//! - stage 0 and 1: each bucket's gradients are copied into one flat fp32 buffer, all-reduced,
//!   and the sums written back into `.grad` (stage 1 also gives each rank's shard its range);
//! - stage 2: each bucket is laid out rank-major (`[world, width]`, every gradient in its
//!   columns), reduce-scattered, and each rank's shards take their part; the full gradients are
//!   freed as soon as they are copied into the buffer.
//!
//! With `overlap_comm` the reducer is also the model's [`Residency`]: when a unit (a decoder
//! layer, the embedding, the head) is released with its gradients ready during the last
//! micro-batch of a step ([`GradientReducer::arm`]), its parameters' buckets start at once and
//! run on c10d's side while backward goes on below. [`GradientReducer::reduce`] (the optimiser
//! step) waits for those, in the order they started, and reduces whatever no unit covered, as
//! the only reduction when nothing overlapped. At most one bucket's buffers are in flight at
//! once (older buckets finish first), as without overlap. A parameter in two units (a tied embedding)
//! belongs to the lowest, the one backward reaches last. Every rank runs the same passes
//! ([`Residency::lockstep`]), so every rank starts the same buckets in the same order; the sums
//! are those of the reduction at the step, element by element, so the results are equal.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::rc::Rc;

use lf_dist::{set_grad, OwnedWork, ProcessGroup, ShardLayout};
use lf_model::{Residency, Unit};
use tch::{Device, Kind, Tensor};

use crate::error::{dist_error, TrainerError};
use crate::gradients::buckets;

/// The trainable parameters each unit's backward completes, by name (see
/// `LmTrainee::unit_parameters`).
pub type UnitParameters = Vec<(Unit, Vec<String>)>;

/// One trainable parameter as the reduction sees it.
pub struct GradTarget {
    pub name: String,
    /// The model's parameter (shares `.grad`).
    pub param: Tensor,
    /// Its split over the ranks (stages 1–2; any layout for stage 0).
    pub layout: ShardLayout,
    /// This rank's element range.
    pub owned: Range<usize>,
    /// This rank's shard, whose `.grad` the step's update reads (stages 1–2, non-empty range).
    pub shard: Option<Tensor>,
}

/// A bucket whose collective is in flight.
struct InFlight {
    members: Vec<usize>,
    /// Elements of its buffer.
    width: usize,
    work: OwnedWork,
}

/// The reduction of one run's gradients (see the module docs).
pub struct GradientReducer {
    pg: Rc<ProcessGroup>,
    stage: u8,
    device: Device,
    targets: Vec<GradTarget>,
    /// Elements per bucket.
    bucket: usize,
    /// Each unit's targets (empty without `overlap_comm`).
    units: HashMap<Unit, Vec<usize>>,
    /// Whether the current backward is the last of its step (its units start their buckets).
    armed: Cell<bool>,
    started: RefCell<Vec<bool>>,
    in_flight: RefCell<VecDeque<InFlight>>,
    /// Buckets started during backward, and at the step, over the run.
    overlapped: Cell<u64>,
    at_step: Cell<u64>,
}

impl GradientReducer {
    /// A reducer of `targets` for ZeRO `stage` (0–2) in buckets of `bucket` elements; with
    /// `units` (`overlap_comm`) each unit's buckets start as the unit finishes its backward.
    pub fn new(
        pg: Rc<ProcessGroup>,
        stage: u8,
        targets: Vec<GradTarget>,
        bucket: usize,
        units: Option<&UnitParameters>,
    ) -> Result<Self, TrainerError> {
        if stage > 2 {
            return Err(TrainerError::runtime(format!(
                "the gradient reducer serves ZeRO stages 0-2, not {stage}"
            )));
        }
        let by_name: HashMap<&str, usize> = targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let mut owner: Vec<Option<Unit>> = vec![None; targets.len()];
        for (unit, names) in units.into_iter().flatten() {
            for name in names {
                if let Some(&i) = by_name.get(name.as_str()) {
                    // The lowest unit is the last one backward reaches.
                    if owner[i].is_none_or(|u| *unit < u) {
                        owner[i] = Some(*unit);
                    }
                }
            }
        }
        let mut by_unit: HashMap<Unit, Vec<usize>> = HashMap::new();
        for (i, unit) in owner.into_iter().enumerate() {
            if let Some(u) = unit {
                by_unit.entry(u).or_default().push(i);
            }
        }
        let n = targets.len();
        Ok(GradientReducer {
            device: pg.device(),
            pg,
            stage,
            targets,
            bucket,
            units: by_unit,
            armed: Cell::new(false),
            started: RefCell::new(vec![false; n]),
            in_flight: RefCell::new(VecDeque::new()),
            overlapped: Cell::new(0),
            at_step: Cell::new(0),
        })
    }

    /// The all-reduce of `params`' gradients of plain data parallelism (ZeRO 0).
    pub fn replicated(
        pg: Rc<ProcessGroup>,
        params: &[(String, Tensor)],
        bucket: usize,
        units: Option<&UnitParameters>,
    ) -> Result<Self, TrainerError> {
        let world = pg.world_size();
        let targets = params
            .iter()
            .map(|(name, p)| {
                Ok(GradTarget {
                    name: name.clone(),
                    param: p.shallow_clone(),
                    layout: ShardLayout::new(p.numel(), world).map_err(dist_error)?,
                    owned: 0..0,
                    shard: None,
                })
            })
            .collect::<Result<Vec<_>, TrainerError>>()?;
        Self::new(pg, 0, targets, bucket, units)
    }

    /// Whether units start their reduction during backward (`overlap_comm`).
    pub fn overlaps(&self) -> bool {
        !self.units.is_empty()
    }

    /// Says whether the next backward is the last micro-batch of its step: only that one's
    /// units start reducing (the earlier ones only accumulate into `.grad`).
    pub fn arm(&self, last: bool) {
        self.armed.set(last && self.overlaps());
    }

    /// Buckets started during backward and at the optimiser step, so far.
    pub fn bucket_counts(&self) -> (u64, u64) {
        (self.overlapped.get(), self.at_step.get())
    }

    /// Sums every target's gradient over the ranks: waits for the buckets started during
    /// backward (in order), then reduces the rest, one bucket at a time.
    pub fn reduce(&self) -> Result<(), TrainerError> {
        self.armed.set(false);
        let _guard = tch::no_grad_guard();
        loop {
            let next = self.in_flight.borrow_mut().pop_front();
            match next {
                Some(f) => self.finish(f)?,
                None => break,
            }
        }
        let rest: Vec<usize> = {
            let mut started = self.started.borrow_mut();
            let rest = (0..self.targets.len()).filter(|&i| !started[i]).collect();
            started.iter_mut().for_each(|s| *s = false);
            rest
        };
        for members in self.buckets_of(&rest) {
            self.at_step.set(self.at_step.get() + 1);
            let f = self.start(members)?;
            self.finish(f)?;
        }
        Ok(())
    }

    /// Starts the buckets of `unit`'s targets not started yet.
    fn unit_ready(&self, unit: Unit) -> Result<(), TrainerError> {
        let Some(idx) = self.units.get(&unit) else {
            return Ok(());
        };
        let todo: Vec<usize> = {
            let mut started = self.started.borrow_mut();
            idx.iter()
                .copied()
                .filter(|&i| !std::mem::replace(&mut started[i], true))
                .collect()
        };
        let _guard = tch::no_grad_guard();
        for members in self.buckets_of(&todo) {
            // No more than one bucket of buffers at once (the communication buffer the planner
            // counts): the oldest buckets finish first. A bucket larger than that (one large
            // tensor) waits for all the others.
            let width = self.width(&members);
            loop {
                let held: usize = self.in_flight.borrow().iter().map(|f| f.width).sum();
                if held == 0 || held + width <= self.bucket {
                    break;
                }
                let oldest = self.in_flight.borrow_mut().pop_front();
                if let Some(f) = oldest {
                    self.finish(f)?;
                }
            }
            self.overlapped.set(self.overlapped.get() + 1);
            let f = self.start(members)?;
            self.in_flight.borrow_mut().push_back(f);
        }
        Ok(())
    }

    /// Elements of a bucket's buffer.
    fn width(&self, members: &[usize]) -> usize {
        members.iter().map(|&i| self.width_of(i)).sum()
    }

    /// Elements target `i` takes in a bucket (padded to the ranks' shards under stage 2).
    fn width_of(&self, i: usize) -> usize {
        let layout = &self.targets[i].layout;
        match self.stage {
            2 => layout.shard_len * self.pg.world_size(),
            _ => layout.numel,
        }
    }

    /// `idx` cut into consecutive buckets of at most `bucket` elements (padded to the ranks'
    /// shards under stage 2).
    fn buckets_of(&self, idx: &[usize]) -> Vec<Vec<usize>> {
        let widths: Vec<usize> = idx.iter().map(|&i| self.width_of(i)).collect();
        buckets(&widths, self.bucket)
            .into_iter()
            .map(|r| idx[r].to_vec())
            .collect()
    }

    /// The gradient of target `i` flattened in fp32 (zeros when no backward reached it).
    fn flat_grad(&self, i: usize) -> Tensor {
        let t = &self.targets[i];
        let g = t.param.grad();
        if g.defined() {
            g.to_kind(Kind::Float).reshape([-1])
        } else {
            Tensor::zeros([t.layout.numel as i64], (Kind::Float, self.device))
        }
    }

    /// Copies the bucket's gradients into its buffer and starts the collective.
    fn start(&self, members: Vec<usize>) -> Result<InFlight, TrainerError> {
        let work = if self.stage == 2 {
            let world = self.pg.world_size() as i64;
            let width: usize = members
                .iter()
                .map(|&i| self.targets[i].layout.shard_len)
                .sum();
            let input = Tensor::zeros([world, width as i64], (Kind::Float, self.device));
            let mut offset = 0i64;
            for &i in &members {
                let t = &self.targets[i];
                let g = t.param.grad();
                let per_rank = t.layout.shard_len as i64;
                if g.defined() {
                    t.layout
                        .write_rank_rows(&g, &input.narrow(1, offset, per_rank))
                        .map_err(|e| TrainerError::from_library("laying out gradients", e))?;
                }
                // The buffer holds it now: free the full gradient (what stage 2 saves).
                set_grad(&t.param, None).map_err(dist_error)?;
                offset += per_rank;
            }
            let mine = Tensor::zeros([width as i64], (Kind::Float, self.device));
            ProcessGroup::reduce_scatter_sum_owned(&self.pg, input.reshape([-1]), mine)
        } else {
            let flat: Vec<Tensor> = members.iter().map(|&i| self.flat_grad(i)).collect();
            ProcessGroup::all_reduce_sum_owned(&self.pg, Tensor::cat(&flat, 0))
        };
        Ok(InFlight {
            width: self.width(&members),
            members,
            work: work.map_err(dist_error)?,
        })
    }

    /// Waits for a bucket and hands out its sums: into `.grad` (stages 0–1) and this rank's
    /// shards (stages 1–2).
    fn finish(&self, f: InFlight) -> Result<(), TrainerError> {
        let out = f.work.wait().map_err(dist_error)?;
        let mut offset = 0i64;
        for i in f.members {
            let t = &self.targets[i];
            let own = t.owned.len() as i64;
            let mine = if self.stage == 2 {
                let part = out.narrow(0, offset, own);
                offset += t.layout.shard_len as i64;
                part
            } else {
                let sum = out.narrow(0, offset, t.layout.numel as i64);
                offset += t.layout.numel as i64;
                write_grad(&t.param, &sum)?;
                sum.narrow(0, t.owned.start as i64, own)
            };
            if let Some(shard) = &t.shard {
                set_grad(shard, Some(&mine.to_kind(shard.kind()).contiguous()))
                    .map_err(dist_error)?;
            }
        }
        Ok(())
    }
}

/// Writes the flat fp32 `sum` into `param.grad` (allocating it when no backward did).
fn write_grad(param: &Tensor, sum: &Tensor) -> Result<(), TrainerError> {
    let sum = sum.view(param.size().as_slice()).to_kind(param.kind());
    let mut g = param.grad();
    if g.defined() {
        g.f_copy_(&sum)
            .map_err(|e| TrainerError::from_library("writing summed gradients", e))
    } else {
        set_grad(param, Some(&sum.contiguous())).map_err(dist_error)
    }
}

impl Drop for GradientReducer {
    fn drop(&mut self) {
        if !self.overlaps() {
            return;
        }
        let (during, at_step) = self.bucket_counts();
        tracing::info!(
            during_backward = during,
            at_step,
            "gradient buckets reduced (overlap_comm: started during backward / at the step)"
        );
    }
}

/// With `overlap_comm` the reducer brackets the model's units: nothing is gathered (every rank
/// holds the whole model), and a unit released with its gradients ready starts its buckets.
impl Residency for GradientReducer {
    type Error = TrainerError;

    fn gather(&self, _unit: Unit) -> Result<(), TrainerError> {
        Ok(())
    }

    fn release(&self, unit: Unit, gradients_ready: bool) -> Result<(), TrainerError> {
        if gradients_ready && self.armed.get() {
            self.unit_ready(unit)?;
        }
        Ok(())
    }

    /// A rank whose micro-batch has no label still runs backward (with zero gradients), so that
    /// its units start the same buckets as the other ranks'.
    fn lockstep(&self) -> bool {
        true
    }
}
