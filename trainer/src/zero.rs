//! ZeRO stages 1–3 over lf-dist's process group: the optimiser side (stage 3's parameter
//! partition is [`crate::zero3`]).
//!
//! Every trainable parameter is split into `world_size` even element ranges ([`ShardLayout`]:
//! rank `r` owns `r·s..(r+1)·s` of the flattened tensor, `s = ceil(numel / world_size)`), so each
//! rank holds `1/world_size` of every parameter's optimiser state and fp32 master copy — the
//! planner's `bytes / N` — whatever the mix of tensor sizes.
//!
//! One step:
//! - **stage 1**: the gradients are all-reduced (as in plain data parallelism); each rank copies
//!   its range of every gradient into its shard's `.grad`.
//! - **stage 2**: a reduce-scatter per bucket of consecutive parameters (flat, laid out rank-major)
//!   leaves each rank only the sum of its ranges; the full gradients are freed right after (the
//!   next backward allocates them afresh), so between steps a rank holds `1/world_size` of the
//!   gradients.
//! - **stage 3** ([`crate::zero3`]): the parameters are partitioned too. The gradients reach the
//!   shards during backward (one reduce-scatter per unit as lf-model releases it), so the step
//!   reduces nothing more, and nothing is all-gathered after it: the next forward gathers each
//!   unit from the updated shards, which are these very tensors.
//! - then the global gradient norm is the square root of the all-reduced sum of every rank's shard
//!   norms², clipping scales the shards, lf-optim updates the shards (AdamW, SGD and 8-bit AdamW
//!   are element-wise, so the update equals the unpartitioned one), and (stages 1–2) an all-gather
//!   per bucket writes the updated shards back into every rank's full parameters.
//!
//! Stages 1–2 run their collectives per bucket of at most the planner's gradient bucket
//! ([`bucket_elements`] padded elements), so no fp32 copy of every gradient or parameter exists
//! at once; stage 3 reduces one unit (a layer, the embedding or the head) at a time. The
//! reductions of stages 1–2 are [`GradientReducer`]'s, which with `overlap_comm` starts each
//! unit's buckets during the last micro-batch's backward; the step then waits for them.
//!
//! Adafactor factors each matrix's second moment by rows and columns, which an element range
//! cuts through, so it is refused under ZeRO (its state is already ~1/rows of AdamW's).
//!
//! Checkpoints: each rank writes its own optimiser state as [`ZeroOptimizer::shard_file`]
//! (`optimizer.rank-R-of-N.safetensors`); weights are written once by rank 0 (under stage 3 from
//! host copies gathered unit by unit with every rank). A resume with another world size (or from
//! an unpartitioned `optimizer.safetensors`) re-slices the element-wise state; state that cannot
//! be re-sliced (8-bit block constants) restarts from zero, and
//! [`StepOptimizer::restore_state`] says so ([`RestoredState::Restarted`]).

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

use lf_api::training::{Optim, TrainingConfig};
use lf_dist::{set_grad, ProcessGroup, ShardLayout};
use tch::{Device, Kind, Tensor};

use crate::error::{dist_error, TrainerError};
use crate::grad_reduce::{GradTarget, GradientReducer, UnitParameters};
use crate::gradients::{bucket_elements, buckets, clip_gradients};
use crate::interfaces::{
    DataParallel, OptimizerBytes, RestoredState, StepOptimizer, OPTIMIZER_FILE,
};
use crate::zero3::ParameterPartition;

/// The tensors of one safetensors file, by name.
pub type NamedTensors = Vec<(String, Tensor)>;

/// One trainable parameter's place in the partition.
struct Slice {
    name: String,
    /// Its split over the ranks; `layout.shard_len` is its width in the flat rank-major buffers.
    layout: ShardLayout,
    /// Offset of this parameter's range in a rank's flat shard buffer (sum of earlier
    /// `shard_len`s).
    offset: usize,
    /// This rank's element range of the flattened parameter.
    owned: Range<usize>,
    /// Index into [`ZeroOptimizer::shards`] when `owned` is non-empty.
    shard: Option<usize>,
    /// The model's parameter (shares its storage).
    param: Tensor,
}

/// ZeRO stage 1/2/3 optimiser: lf-optim over this rank's shards plus the collectives around it.
pub struct ZeroOptimizer {
    stage: u8,
    pg: Rc<ProcessGroup>,
    rank: usize,
    device: Device,
    slices: Vec<Slice>,
    /// This rank's shards (1-D leaf tensors in the parameters' dtype), in parameter order.
    shards: Vec<Tensor>,
    /// Elements per bucket of the reductions and gathers.
    bucket: usize,
    /// The ZeRO-3 parameter partition whose shards these are (a prefetch started before a step
    /// is stale after it).
    partition: Option<Rc<ParameterPartition>>,
    /// Stages 1–2: the gradient reduction into the shards (shared with the model under
    /// `overlap_comm`, whose units start it during backward).
    reducer: Option<Rc<GradientReducer>>,
    inner: Box<dyn lf_optim::Optimizer>,
}

fn torch(context: &str, e: tch::TchError) -> TrainerError {
    TrainerError::from_library(context, e)
}

impl ZeroOptimizer {
    /// Partitions `params` over `pg` and builds `cfg.optim` over this rank's shards; under ZeRO-3
    /// the shards are `partition`'s (the parameters themselves are emptied). Stages 1–2 with
    /// `overlap_units` (`overlap_comm`) start each unit's reduction as its backward finishes
    /// ([`ZeroOptimizer::gradient_reducer`] is the model's residency then).
    pub fn new(
        cfg: &TrainingConfig,
        stage: u8,
        pg: Rc<ProcessGroup>,
        params: &[(String, Tensor)],
        partition: Option<Rc<ParameterPartition>>,
        overlap_units: Option<&UnitParameters>,
    ) -> Result<Self, TrainerError> {
        if cfg.optim == Optim::Adafactor {
            return Err(TrainerError::config(format!(
                "optim: adafactor cannot be partitioned by ZeRO (zero_stage {stage}): it factors each matrix's second moment by whole rows and columns. Use zero_stage: 0 (Adafactor's state is already a small fraction of AdamW's) or optim: adamw_torch / adamw_8bit"
            )));
        }
        let (world, rank) = (pg.world_size(), pg.rank());
        let device = pg.device();
        let mut slices = Vec::with_capacity(params.len());
        let mut shards = Vec::new();
        let mut named = Vec::new();
        let mut offset = 0;
        let _guard = tch::no_grad_guard();
        for (name, p) in params {
            // Under stage 3 the parameters are emptied: the partition holds the shards (these
            // very tensors become the optimiser's parameters) and knows the sizes.
            let adopted = match &partition {
                Some(part) => Some(part.trainable(name).ok_or_else(|| {
                    TrainerError::runtime(format!(
                        "ZeRO-3: the trainable parameter `{name}` is not in the parameter partition"
                    ))
                })?),
                None => None,
            };
            let numel = adopted.as_ref().map_or(p.numel(), |(n, _)| *n);
            let layout = ShardLayout::new(numel, world).map_err(dist_error)?;
            let owned = layout.owned(rank);
            let shard = if owned.is_empty() {
                None
            } else {
                let t = match adopted {
                    Some((_, shard)) => shard,
                    None => layout.owned_copy(p, rank).set_requires_grad(true),
                };
                named.push((name.clone(), t.shallow_clone()));
                shards.push(t);
                Some(shards.len() - 1)
            };
            slices.push(Slice {
                name: name.clone(),
                layout,
                offset,
                owned,
                shard,
                param: p.shallow_clone(),
            });
            offset += layout.shard_len;
        }
        let inner = lf_optim::build(cfg, &named)
            .map_err(|e| TrainerError::config(format!("optimizer: {e}")))?;
        let stage = stage.min(3);
        let bucket = bucket_elements();
        let reducer = if stage < 3 {
            let targets = slices
                .iter()
                .map(|s| GradTarget {
                    name: s.name.clone(),
                    param: s.param.shallow_clone(),
                    layout: s.layout,
                    owned: s.owned.clone(),
                    shard: s.shard.map(|i| shards[i].shallow_clone()),
                })
                .collect();
            let r = GradientReducer::new(pg.clone(), stage, targets, bucket, overlap_units)?;
            Some(Rc::new(r))
        } else {
            None
        };
        Ok(ZeroOptimizer {
            stage,
            pg,
            rank,
            device,
            slices,
            shards,
            bucket,
            partition,
            reducer,
            inner,
        })
    }

    /// The gradient reduction of stages 1–2 (`None` under stage 3, whose units reduce as the
    /// partition releases them).
    pub fn gradient_reducer(&self) -> Option<Rc<GradientReducer>> {
        self.reducer.clone()
    }

    /// Copies this rank's ranges of the model's parameters into the shards: after weights were
    /// loaded from a checkpoint (between steps the all-gather keeps both equal).
    fn refresh_shards(&self) -> Result<(), TrainerError> {
        let _guard = tch::no_grad_guard();
        for s in &self.slices {
            if let Some(i) = s.shard {
                s.layout
                    .copy_owned_into(&self.shards[i], &s.param, self.rank)
                    .map_err(|e| torch("refreshing the parameter shards", e))?;
            }
        }
        Ok(())
    }

    /// This rank's shard tensors (what its optimiser state is for).
    pub fn shards(&self) -> &[Tensor] {
        &self.shards
    }

    /// The file name of rank `rank`'s optimiser state in a checkpoint of world size `world`.
    pub fn shard_file(rank: usize, world: usize) -> String {
        format!("optimizer.rank-{rank:05}-of-{world:05}.safetensors")
    }

    /// Buckets of consecutive parameters whose padded (`world × shard_len`) sizes stay within the
    /// planner's gradient bucket.
    fn buckets(&self) -> Vec<Range<usize>> {
        let world = self.pg.world_size();
        let widths: Vec<usize> = self
            .slices
            .iter()
            .map(|s| s.layout.shard_len * world)
            .collect();
        buckets(&widths, self.bucket)
    }

    fn shard_grads(&self) -> Vec<Tensor> {
        self.shards
            .iter()
            .map(|t| t.grad())
            .filter(|g| g.defined())
            .collect()
    }
}

impl StepOptimizer for ZeroOptimizer {
    fn reduce_gradients(
        &mut self,
        group: &dyn DataParallel,
        _params: &[(String, Tensor)],
    ) -> Result<f64, TrainerError> {
        let _guard = tch::no_grad_guard();
        match &self.reducer {
            // Waits for what the units started during backward (`overlap_comm`), reduces the rest.
            Some(reducer) => reducer.reduce()?,
            // Stage 3: lf-model's releases already reduce-scattered every micro-batch into the
            // shards; a shard no backward reached (no unit released with gradients) gets zeros.
            None => {
                for t in &self.shards {
                    if !t.grad().defined() {
                        set_grad(t, Some(&t.zeros_like())).map_err(dist_error)?;
                    }
                }
            }
        }
        // ‖g‖² summed over the ranks' disjoint shards.
        let local: f64 = self
            .shard_grads()
            .iter()
            .map(|g| {
                g.to_kind(Kind::Float)
                    .square()
                    .sum(Kind::Float)
                    .double_value(&[])
            })
            .sum();
        Ok(group.sum_scalar(local)?.max(0.0).sqrt())
    }

    fn clip_gradients(
        &mut self,
        _params: &[(String, Tensor)],
        norm: f64,
        max_norm: f64,
    ) -> Result<(), TrainerError> {
        let shards: Vec<(String, Tensor)> = self
            .slices
            .iter()
            .filter_map(|s| {
                s.shard
                    .map(|i| (s.name.clone(), self.shards[i].shallow_clone()))
            })
            .collect();
        clip_gradients(&shards, norm, max_norm)
    }

    fn step(&mut self, params: &[(String, Tensor)], lr: f64) -> Result<(), TrainerError> {
        if let Some(p) = &self.partition {
            p.discard_stale_prefetch()?;
        }
        self.inner
            .step(&self.shards, lr)
            .map_err(|e| TrainerError::from_library("optimizer step", e))?;
        let _guard = tch::no_grad_guard();
        if self.stage >= 3 {
            // The shards are the parameters: the next gather reads them.
            for t in &self.shards {
                set_grad(t, None).map_err(dist_error)?;
            }
            return Ok(());
        }
        // Per bucket of consecutive parameters: rank r's flat buffer holds each parameter's
        // range padded to its `shard_len`; one all-gather gives every rank the updated parameters.
        let world = self.pg.world_size() as i64;
        for range in self.buckets() {
            let slices = &self.slices[range.clone()];
            let pieces: Vec<Tensor> = slices
                .iter()
                .map(|s| {
                    let own = match s.shard {
                        Some(i) => self.shards[i].to_kind(Kind::Float),
                        None => Tensor::zeros([0], (Kind::Float, self.device)),
                    };
                    s.layout.padded_shard(&own)
                })
                .collect();
            let input = Tensor::cat(&pieces, 0);
            drop(pieces);
            let width: i64 = slices.iter().map(|s| s.layout.shard_len as i64).sum();
            let mut gathered = Tensor::zeros([world * width], (Kind::Float, self.device));
            self.pg
                .all_gather(&input, &mut gathered)
                .map_err(dist_error)?;
            let gathered = gathered.view([world, width]);
            let base = slices[0].offset as i64;
            for (s, (_, p)) in slices.iter().zip(&params[range]) {
                let full = s.layout.from_rank_rows(&gathered.narrow(
                    1,
                    s.offset as i64 - base,
                    s.layout.shard_len as i64,
                ));
                let mut p = p.shallow_clone();
                p.f_copy_(&full.view(p.size().as_slice()).to_kind(p.kind()))
                    .map_err(|e| torch("writing gathered parameters", e))?;
            }
        }
        for t in &self.shards {
            set_grad(t, None).map_err(dist_error)?;
        }
        Ok(())
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.inner.state_dict()
    }

    fn state_bytes(&self) -> Option<OptimizerBytes> {
        let b = self.inner.state_bytes_detail();
        Some(OptimizerBytes {
            device: b.device,
            host: b.host,
        })
    }

    /// The shards' gradients under stage 2 (what the reduce-scatter leaves a rank; freed again
    /// after the step), every full gradient under stage 1.
    fn gradient_bytes(&self, params: &[(String, Tensor)]) -> Option<u64> {
        let bytes = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as u64;
        Some(if self.stage >= 2 {
            self.shards.iter().map(bytes).sum()
        } else {
            params.iter().map(|(_, p)| bytes(p)).sum()
        })
    }

    fn partition(&self) -> (u8, usize) {
        (self.stage, self.pg.world_size())
    }

    fn load_state_tensors(&mut self, state: Vec<(String, Tensor)>) -> Result<(), TrainerError> {
        self.inner.load_state_dict(state).map_err(|e| {
            TrainerError::config(format!(
                "the checkpoint's optimizer state does not fit this run: {e}"
            ))
        })
    }

    fn state_file(&self) -> String {
        Self::shard_file(self.pg.rank(), self.pg.world_size())
    }

    fn state_files(&self) -> Vec<String> {
        let world = self.pg.world_size();
        (0..world).map(|r| Self::shard_file(r, world)).collect()
    }

    fn partitioned(&self) -> bool {
        true
    }

    /// Called after the model loaded the checkpoint's weights: the shards take them over, then
    /// the optimiser state is read.
    fn restore_state(&mut self, dir: &Path) -> Result<RestoredState, TrainerError> {
        // Under stage 3 the parameters are released: the partition refreshed the shards when
        // the model loaded the checkpoint's weights.
        if self.stage < 3 {
            self.refresh_shards()?;
        }
        let own = dir.join(self.state_file());
        if own.exists() {
            let tensors = Tensor::read_safetensors(&own)
                .map_err(|e| TrainerError::from_library("reading the optimizer state", e))?;
            self.load_state_tensors(tensors)?;
            return Ok(RestoredState::Restored);
        }
        let Some(saved) = saved_state_files(dir)? else {
            return Ok(RestoredState::Absent);
        };
        let owned: Vec<(&str, usize, Range<usize>)> = self
            .slices
            .iter()
            .filter(|s| s.shard.is_some())
            .map(|s| (s.name.as_str(), s.layout.numel, s.owned.clone()))
            .collect();
        match reslice(&saved, &owned) {
            Ok(state) => {
                tracing::info!(
                    "re-partitioned the optimizer state of {} file(s) in {} for rank {} of {}",
                    saved.len(),
                    dir.display(),
                    self.pg.rank(),
                    self.pg.world_size()
                );
                self.load_state_tensors(state)?;
                Ok(RestoredState::Restored)
            }
            Err(why) => Ok(RestoredState::Restarted {
                why: format!(
                    "it was written with another partition and cannot be re-sliced ({why})"
                ),
            }),
        }
    }
}

/// The optimiser-state files of a checkpoint, in rank order: every `optimizer.rank-R-of-N` file
/// of one world size, or the unpartitioned `optimizer.safetensors`. `None` when there are none.
pub fn saved_state_files(dir: &Path) -> Result<Option<Vec<NamedTensors>>, TrainerError> {
    let read = |p: &Path| {
        Tensor::read_safetensors(p)
            .map_err(|e| TrainerError::from_library("reading the optimizer state", e))
    };
    let single = dir.join(OPTIMIZER_FILE);
    if single.exists() {
        return Ok(Some(vec![read(&single)?]));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| TrainerError::io("list", dir, e))?;
    let mut world = None;
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("optimizer.rank-")
            .and_then(|r| r.strip_suffix(".safetensors"))
            .and_then(|r| r.split_once("-of-"))
            .and_then(|(_, n)| n.parse::<usize>().ok())
        {
            world = Some(n);
        }
    }
    let Some(world) = world else { return Ok(None) };
    let mut files = Vec::with_capacity(world);
    for r in 0..world {
        let p = dir.join(ZeroOptimizer::shard_file(r, world));
        if !p.exists() {
            return Err(TrainerError::config(format!(
                "{} is missing (the checkpoint holds a {world}-rank optimizer state)",
                p.display()
            )));
        }
        files.push(read(&p)?);
    }
    Ok(Some(files))
}

/// Re-slices saved optimiser state (one map per saved rank, in rank order) for a new partition:
/// for every parameter `(name, numel, owned range)`, each `{name}.{state}` whose saved pieces
/// add up to `numel` elements is concatenated and cut to `owned`; one-element entries (`.step`)
/// and entries that are not per-parameter (`optimizer.kind`) are taken from the first file.
pub fn reslice(
    saved: &[NamedTensors],
    owned: &[(&str, usize, Range<usize>)],
) -> Result<Vec<(String, Tensor)>, String> {
    let maps: Vec<HashMap<&str, &Tensor>> = saved
        .iter()
        .map(|f| f.iter().map(|(k, t)| (k.as_str(), t)).collect())
        .collect();
    let first = maps.first().ok_or("no saved state")?;
    let mut out = Vec::new();
    // Entries of the optimiser as a whole (`optimizer.kind`), not of a parameter.
    for (key, t) in first {
        if key.starts_with("optimizer.") {
            out.push((key.to_string(), t.copy()));
        }
    }
    for (name, numel, range) in owned {
        let prefix = format!("{name}.");
        let mut keys: Vec<&str> = maps
            .iter()
            .flat_map(|m| m.keys().copied())
            .filter(|k| k.starts_with(&prefix) && !k[prefix.len()..].contains('.'))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return Err(format!("no state for `{name}`"));
        }
        for key in keys {
            let pieces: Vec<&Tensor> = maps.iter().filter_map(|m| m.get(key).copied()).collect();
            let total: usize = pieces.iter().map(|t| t.numel()).sum();
            if pieces.iter().all(|t| t.numel() == 1) {
                out.push((key.to_string(), pieces[0].copy()));
            } else if total == *numel {
                let flat: Vec<Tensor> = pieces.iter().map(|t| t.reshape([-1])).collect();
                let all = Tensor::cat(&flat, 0);
                out.push((
                    key.to_string(),
                    all.narrow(0, range.start as i64, range.len() as i64).copy(),
                ));
            } else {
                return Err(format!(
                    "`{key}` holds {total} elements in all for a parameter of {numel}"
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reslice_concatenates_elementwise_state_and_keeps_scalars() {
        let kind = Tensor::from_slice(b"adamw_torch");
        let r0 = vec![
            ("optimizer.kind".to_string(), kind.copy()),
            ("w.step".to_string(), Tensor::from_slice(&[3.0f64])),
            (
                "w.exp_avg".to_string(),
                Tensor::from_slice(&[1.0f32, 2.0, 3.0]),
            ),
        ];
        let r1 = vec![
            ("optimizer.kind".to_string(), kind),
            ("w.step".to_string(), Tensor::from_slice(&[3.0f64])),
            ("w.exp_avg".to_string(), Tensor::from_slice(&[4.0f32, 5.0])),
        ];
        let out = reslice(&[r0, r1], &[("w", 5, 1..4)]).unwrap();
        let get = |k: &str| out.iter().find(|(n, _)| n == k).unwrap().1.shallow_clone();
        assert_eq!(
            Vec::<f32>::try_from(&get("w.exp_avg")).unwrap(),
            vec![2.0, 3.0, 4.0]
        );
        assert_eq!(get("w.step").double_value(&[0]), 3.0);
        assert_eq!(get("optimizer.kind").numel(), 11);
        // Block constants that do not add up to the parameter cannot be re-sliced.
        let bad = vec![("w.absmax".to_string(), Tensor::from_slice(&[1.0f32, 2.0]))];
        assert!(reslice(&[bad], &[("w", 5, 0..5)]).is_err());
    }
}
