//! ZeRO stage 3: the parameters themselves partitioned across the ranks.
//!
//! Every tensor of the model — dense base weights, quantised base storage (packed 4-bit codes and
//! their block constants, kept packed), LoRA/DoRA adapters, norms, embedding and head — is split
//! into the same even element ranges as the ZeRO optimiser uses ([`ShardLayout`]); rank `r` keeps
//! only its range. The model's own tensors are emptied (`Tensor::set_data` with an empty tensor),
//! so between uses a rank holds `1/world_size` of every weight.
//!
//! lf-model brackets each use of a [`Unit`] (embedding, decoder layer, head) with
//! [`Residency::gather`] / [`Residency::release`]: gathering is one all-gather per dtype of the
//! unit's shards, written back into the model's tensors in place; releasing empties them again.
//! Right after a unit is gathered, the unit that followed the same pair of units last time (the
//! next layer in forward, the one below in backward: the order is learnt, not assumed) starts
//! gathering asynchronously, so at most two units are whole at once — the planner's budget. A
//! prefetch that holds trainable tensors is discarded at the optimiser step (it would be stale),
//! and any prefetch at a checkpoint load or save.
//! Releasing a unit after its backward (`gradients_ready`) reduce-scatters its trainable tensors'
//! gradients in one collective, adds this rank's part to the shard's `.grad` (micro-batches
//! accumulate there) and frees the full gradients.
//!
//! The partition is built while the model loads: the loader hands over each unit as soon as it is
//! complete ([`ParameterPartition::adopt`]), so a rank never holds more than its shards plus one
//! unit (one decoder layer, or the embedding) — the whole model is never materialised on one
//! device. The fine-tuning method's adapters are adopted after they are attached
//! ([`ParameterPartition::complete`]). The trainable shards are the optimiser's parameters
//! (the ZeRO optimiser uses these very tensors), so the optimiser updates exactly
//! what the next gather reads.
//!
//! Saving gathers the weights unit by unit, each rank taking part and the writing rank keeping a
//! host copy ([`ParameterPartition::gather_to_host`]), so neither a checkpoint nor the final
//! adapter or model needs the whole model on one device.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

use lf_dist::{set_grad, OwnedGather, ProcessGroup, ShardLayout};
use lf_model::safetensors_io::MappedFile;
use lf_model::{CausalLm, Residency, Unit};
use tch::{Device, Kind, Tensor};

use crate::data_parallel::dist_error;
use crate::error::TrainerError;

/// One tensor of the model and this rank's range of it.
struct Entry {
    name: String,
    /// The model's tensor (same TensorImpl: `set_data` on it changes the model).
    tensor: Tensor,
    shape: Vec<i64>,
    kind: Kind,
    /// Its split over the ranks (`layout.shard_len`: elements per rank, `ceil(numel / world)`).
    layout: ShardLayout,
    owned: Range<usize>,
    /// This rank's elements (1-D, `owned.len()` long, `kind`).
    shard: Tensor,
    trainable: bool,
    /// Whether `tensor` holds its full values now.
    resident: Cell<bool>,
}

/// One dtype's all-gather of some entries, in flight.
struct Piece {
    entries: Vec<usize>,
    /// Sum of the entries' `shard_len`: one rank's part of the gathered buffer.
    width: usize,
    work: OwnedGather,
}

/// The parameter partition of one model over a process group (see the module docs).
pub struct ParameterPartition {
    pg: Rc<ProcessGroup>,
    device: Device,
    entries: Vec<Entry>,
    /// The entries of each unit (a tied embedding is in two units).
    units: BTreeMap<Unit, Vec<usize>>,
    by_name: HashMap<String, usize>,
    /// The unit being gathered ahead of its use, if any.
    prefetch: RefCell<Option<(Unit, Vec<Piece>)>>,
    /// The last two units gathered, and which unit followed each pair so far.
    history: Cell<(Option<Unit>, Option<Unit>)>,
    successors: RefCell<HashMap<(Option<Unit>, Unit), Unit>>,
    /// Prefetches used, and discarded.
    prefetch_used: Cell<u64>,
    prefetch_discarded: Cell<u64>,
}

fn torch(context: &str, e: tch::TchError) -> TrainerError {
    TrainerError::from_library(context, e)
}

impl ParameterPartition {
    /// An empty partition over `pg`: the loader hands it each unit as it is loaded
    /// ([`ParameterPartition::adopt`]), and [`ParameterPartition::complete`] adds what the
    /// fine-tuning method attached (adapters) and marks what trains.
    pub fn new(pg: Rc<ProcessGroup>) -> Self {
        ParameterPartition {
            device: pg.device(),
            pg,
            entries: Vec::new(),
            units: BTreeMap::new(),
            by_name: HashMap::new(),
            prefetch: RefCell::new(None),
            history: Cell::new((None, None)),
            successors: RefCell::new(HashMap::new()),
            prefetch_used: Cell::new(0),
            prefetch_discarded: Cell::new(0),
        }
    }

    /// Takes this rank's range of each of `unit`'s tensors and empties the tensors (a tensor
    /// already adopted under another unit, as a tied embedding, is only linked).
    pub fn adopt(
        &mut self,
        unit: Unit,
        tensors: Vec<(String, Tensor)>,
    ) -> Result<(), TrainerError> {
        let (world, rank) = (self.pg.world_size(), self.pg.rank());
        let _guard = tch::no_grad_guard();
        let mut fresh = Vec::new();
        for (name, tensor) in tensors {
            let i = match self.by_name.get(&name) {
                Some(&i) => i,
                None => {
                    let layout = ShardLayout::new(tensor.numel(), world).map_err(dist_error)?;
                    let owned = layout.owned(rank);
                    let shard = layout.owned_copy(&tensor, rank);
                    let i = self.entries.len();
                    self.by_name.insert(name.clone(), i);
                    self.entries.push(Entry {
                        name,
                        shape: tensor.size(),
                        kind: tensor.kind(),
                        tensor,
                        layout,
                        owned,
                        shard,
                        trainable: false,
                        resident: Cell::new(true),
                    });
                    fresh.push(i);
                    i
                }
            };
            let idx = self.units.entry(unit).or_default();
            if !idx.contains(&i) {
                idx.push(i);
            }
        }
        self.release_entries(&fresh)
    }

    /// Adopts every tensor of `lm` not adopted yet (the adapters the fine-tuning method attached,
    /// or everything when the model was loaded whole) and marks the shards of the tensors that
    /// train as trainable leaves: the optimiser's parameters ([`ParameterPartition::trainable`]).
    pub fn complete(&mut self, lm: &CausalLm) -> Result<(), TrainerError> {
        for unit in lm.units() {
            self.adopt_marking_trainable(unit, lm.unit_tensors(unit))?;
        }
        tracing::info!(
            tensors = self.entries.len(),
            units = self.units.len(),
            frozen_shard_bytes = self.frozen_shard_bytes(),
            trainable_shard_bytes = self.trainable_shard_bytes(),
            "ZeRO-3: parameters partitioned"
        );
        Ok(())
    }

    /// Adopts `tensors` into `unit` ([`ParameterPartition::adopt`]) and marks the shards of those
    /// that require grad as trainable leaves. Besides the model's own tensors
    /// ([`ParameterPartition::complete`]), a tensor the trainer adds to a unit's computation, as
    /// the value head of `stage: rm` read while the head unit is gathered.
    pub fn adopt_marking_trainable(
        &mut self,
        unit: Unit,
        tensors: Vec<(String, Tensor)>,
    ) -> Result<(), TrainerError> {
        let trains: Vec<(String, bool)> = tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.requires_grad()))
            .collect();
        self.adopt(unit, tensors)?;
        for (name, trains) in trains {
            if let Some(&i) = self.by_name.get(&name) {
                let e = &mut self.entries[i];
                if trains && !e.trainable {
                    e.trainable = true;
                    e.shard = e.shard.detach().set_requires_grad(true);
                }
            }
        }
        Ok(())
    }

    /// The element count and this rank's shard (a trainable leaf) of the trainable tensor `name`.
    pub fn trainable(&self, name: &str) -> Option<(usize, Tensor)> {
        let e = &self.entries[*self.by_name.get(name)?];
        e.trainable
            .then(|| (e.layout.numel, e.shard.shallow_clone()))
    }

    fn bytes(t: &Tensor) -> u64 {
        (t.numel() * t.kind().elt_size_in_bytes()) as u64
    }

    /// Bytes of the frozen shards this rank holds.
    pub fn frozen_shard_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| !e.trainable)
            .map(|e| Self::bytes(&e.shard))
            .sum()
    }

    /// Bytes of the trainable shards this rank holds (the optimiser's tensors).
    pub fn trainable_shard_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.trainable)
            .map(|e| Self::bytes(&e.shard))
            .sum()
    }

    /// Makes `idx` whole: one all-gather per dtype of the shards, written into the tensors.
    fn gather_entries(&self, idx: &[usize]) -> Result<(), TrainerError> {
        let pieces = self.start_gather(idx)?;
        self.finish_gather(pieces)
    }

    /// Starts the all-gathers of the entries of `idx` that are not whole (one per dtype), from a
    /// snapshot of the shards taken now.
    fn start_gather(&self, idx: &[usize]) -> Result<Vec<Piece>, TrainerError> {
        let _guard = tch::no_grad_guard();
        let todo: Vec<usize> = idx
            .iter()
            .copied()
            .filter(|&i| !self.entries[i].resident.get())
            .collect();
        let mut kinds: Vec<Kind> = Vec::new();
        for &i in &todo {
            if !kinds.contains(&self.entries[i].kind) {
                kinds.push(self.entries[i].kind);
            }
        }
        let world = self.pg.world_size() as i64;
        let mut started = Vec::with_capacity(kinds.len());
        for kind in kinds {
            let entries: Vec<usize> = todo
                .iter()
                .copied()
                .filter(|&i| self.entries[i].kind == kind)
                .collect();
            let width: usize = entries
                .iter()
                .map(|&i| self.entries[i].layout.shard_len)
                .sum();
            let pieces: Vec<Tensor> = entries
                .iter()
                .map(|&i| {
                    let e = &self.entries[i];
                    e.layout.padded_shard(&e.shard.detach())
                })
                .collect();
            // `cat` copies: the all-gather reads this snapshot, not the live shards.
            let input = Tensor::cat(&pieces, 0);
            drop(pieces);
            let output = Tensor::empty([world * width as i64], (kind, self.device));
            let work =
                ProcessGroup::all_gather_owned(&self.pg, input, output).map_err(dist_error)?;
            started.push(Piece {
                entries,
                width,
                work,
            });
        }
        Ok(started)
    }

    /// Waits for `pieces` and writes the gathered values into their tensors.
    fn finish_gather(&self, pieces: Vec<Piece>) -> Result<(), TrainerError> {
        let _guard = tch::no_grad_guard();
        let world = self.pg.world_size() as i64;
        for piece in pieces {
            let gathered = piece.work.wait().map_err(dist_error)?;
            let gathered = gathered.view([world, piece.width as i64]);
            let mut offset = 0i64;
            for i in piece.entries {
                let e = &self.entries[i];
                let full = e
                    .layout
                    .from_rank_rows(&gathered.narrow(1, offset, e.layout.shard_len as i64))
                    .reshape(e.shape.as_slice())
                    .contiguous();
                let mut t = e.tensor.shallow_clone();
                t.f_set_data(&full)
                    .map_err(|err| torch(&format!("ZeRO-3: restoring `{}`", e.name), err))?;
                e.resident.set(true);
                offset += e.layout.shard_len as i64;
            }
        }
        Ok(())
    }

    /// Waits for an outstanding prefetch and drops what it gathered: the shards changed since it
    /// started (a checkpoint load) or are about to be written. Every rank makes the same
    /// prefetches, so the collectives stay matched.
    pub fn discard_prefetch(&self) -> Result<(), TrainerError> {
        let pending = self.prefetch.borrow_mut().take();
        match pending {
            Some((_, pieces)) => self.wait_out(pieces),
            None => Ok(()),
        }
    }

    /// [`ParameterPartition::discard_prefetch`] when the prefetch holds a trainable tensor (which
    /// an optimiser step changes); a prefetch of frozen weights stays valid.
    pub fn discard_stale_prefetch(&self) -> Result<(), TrainerError> {
        let stale = self.prefetch.borrow().as_ref().is_some_and(|(_, pieces)| {
            pieces
                .iter()
                .any(|p| p.entries.iter().any(|&i| self.entries[i].trainable))
        });
        if stale {
            self.discard_prefetch()?;
        }
        Ok(())
    }

    /// Waits for `pieces` and drops what they gathered.
    fn wait_out(&self, pieces: Vec<Piece>) -> Result<(), TrainerError> {
        self.prefetch_discarded
            .set(self.prefetch_discarded.get() + 1);
        for piece in pieces {
            drop(piece.work.wait().map_err(dist_error)?);
        }
        Ok(())
    }

    /// After gathering `unit`: learns which unit followed the previous two, and starts gathering
    /// the unit that followed this pair last time (the next layer in forward, the one below in
    /// backward), so its communication overlaps this unit's computation.
    fn prefetch_after(&self, unit: Unit) -> Result<(), TrainerError> {
        let (before, last) = self.history.get();
        if let Some(last) = last {
            self.successors.borrow_mut().insert((before, last), unit);
        }
        self.history.set((last, Some(unit)));
        let next = self.successors.borrow().get(&(last, unit)).copied();
        let Some(next) = next.filter(|n| *n != unit) else {
            return Ok(());
        };
        let Some(idx) = self.units.get(&next) else {
            return Ok(());
        };
        let pieces = self.start_gather(idx)?;
        if !pieces.is_empty() {
            *self.prefetch.borrow_mut() = Some((next, pieces));
        }
        Ok(())
    }

    /// Reduce-scatters the gradients of the trainable entries of `idx` (zeros where a tensor has
    /// none) and adds this rank's part to the shards' `.grad`; frees the full gradients.
    fn reduce_gradients(&self, idx: &[usize]) -> Result<(), TrainerError> {
        let _guard = tch::no_grad_guard();
        let trainable: Vec<&Entry> = idx
            .iter()
            .map(|&i| &self.entries[i])
            .filter(|e| e.trainable)
            .collect();
        if trainable.is_empty() {
            return Ok(());
        }
        let world = self.pg.world_size() as i64;
        let width: usize = trainable.iter().map(|e| e.layout.shard_len).sum();
        // One fp32 buffer laid out rank-major ([world, width]); each gradient is copied (and
        // converted) into its columns once.
        let input = Tensor::zeros([world, width as i64], (Kind::Float, self.device));
        let mut offset = 0i64;
        for e in &trainable {
            let g = e.tensor.grad();
            let per_rank = e.layout.shard_len as i64;
            if g.defined() {
                e.layout
                    .write_rank_rows(&g, &input.narrow(1, offset, per_rank))
                    .map_err(|err| torch("ZeRO-3: laying out gradients", err))?;
            }
            offset += per_rank;
        }
        let input = input.reshape([-1]);
        let mut mine = Tensor::zeros([width as i64], (Kind::Float, self.device));
        self.pg
            .reduce_scatter_sum(&input, &mut mine)
            .map_err(dist_error)?;
        drop(input);
        let mut offset = 0i64;
        for e in trainable {
            set_grad(&e.tensor, None).map_err(dist_error)?;
            if !e.owned.is_empty() {
                let part = mine
                    .narrow(0, offset, e.owned.len() as i64)
                    .to_kind(e.shard.kind());
                let mut g = e.shard.grad();
                if g.defined() {
                    g.f_add_(&part)
                        .map(drop)
                        .map_err(|err| torch("ZeRO-3: accumulating a gradient shard", err))?;
                } else {
                    set_grad(&e.shard, Some(&part.copy())).map_err(dist_error)?;
                }
            }
            offset += e.layout.shard_len as i64;
        }
        Ok(())
    }

    fn release_entries(&self, idx: &[usize]) -> Result<(), TrainerError> {
        for &i in idx {
            let e = &self.entries[i];
            if !e.resident.get() {
                continue;
            }
            let mut t = e.tensor.shallow_clone();
            t.f_set_data(&Tensor::empty([0], (e.kind, self.device)))
                .map_err(|err| torch(&format!("ZeRO-3: releasing `{}`", e.name), err))?;
            e.resident.set(false);
        }
        Ok(())
    }

    /// Makes every tensor (or every trainable one) whole in host memory where `keep` is set (the
    /// rank that writes them), unit by unit: each unit is gathered on the device, copied to the
    /// host and released again, so the device never holds more than one unit. All ranks must call
    /// it (the gathers are collectives); ranks without `keep` only take part. The kept tensors stay
    /// whole until [`ParameterPartition::release_all`].
    pub fn gather_to_host(&self, trainable_only: bool, keep: bool) -> Result<(), TrainerError> {
        self.discard_prefetch()?;
        let mut held: Vec<(usize, Tensor)> = Vec::new();
        // Every rank skips the same entries (a tied embedding is in two units), so the gathers
        // match whether or not this rank keeps copies.
        let mut seen: HashSet<usize> = HashSet::new();
        for idx in self.units.values() {
            let wanted: Vec<usize> = idx
                .iter()
                .copied()
                .filter(|&i| !trainable_only || self.entries[i].trainable)
                .filter(|&i| seen.insert(i))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            self.gather_entries(&wanted)?;
            if keep {
                for &i in &wanted {
                    let host = self.entries[i]
                        .tensor
                        .detach()
                        .f_to_device(Device::Cpu)
                        .map_err(|err| {
                            torch("ZeRO-3: copying a gathered tensor to the host", err)
                        })?;
                    held.push((i, host));
                }
            }
            self.release_entries(&wanted)?;
        }
        for (i, host) in held {
            let e = &self.entries[i];
            let mut t = e.tensor.shallow_clone();
            t.f_set_data(&host)
                .map_err(|err| torch(&format!("ZeRO-3: holding `{}` on the host", e.name), err))?;
            e.resident.set(true);
        }
        Ok(())
    }

    /// Empties every tensor made whole by [`ParameterPartition::gather_to_host`] again.
    pub fn release_all(&self) -> Result<(), TrainerError> {
        self.release_entries(&(0..self.entries.len()).collect::<Vec<_>>())
    }

    /// Reads this rank's range of every trainable tensor from the checkpoint `files` (each tensor
    /// from the first file that holds it) straight into its shard, one tensor at a time (no
    /// collective, never the whole model in memory): the weights half of a resume. Names and
    /// sizes must match this run's trainable tensors.
    pub fn load_trainable_shards(&self, files: &[&Path]) -> Result<(), TrainerError> {
        self.discard_prefetch()?;
        let mut opened = Vec::with_capacity(files.len());
        for &file in files {
            let mapped = MappedFile::open(file).map_err(|e| shard_file_error(file, e))?;
            let names = mapped.names().map_err(|e| shard_file_error(file, e))?;
            opened.push((file, mapped, names));
        }
        for e in self.entries.iter().filter(|e| e.trainable) {
            // A tensor no file holds is reported against the first file (the model's weights).
            let (file, mapped, _) = opened
                .iter()
                .find(|(_, _, names)| names.contains(&e.name))
                .or(opened.first())
                .ok_or_else(|| TrainerError::config("a checkpoint without weight files"))?;
            let fail = |message: String| shard_file_error(file, message);
            let full = mapped
                .load(&e.name, Some(e.kind), Device::Cpu)
                .map_err(|err| fail(err.to_string()))?;
            if full.numel() != e.layout.numel {
                return Err(fail(format!(
                    "`{}` holds {} elements, this run's tensor {}",
                    e.name,
                    full.numel(),
                    e.layout.numel
                )));
            }
            if !e.owned.is_empty() {
                e.layout
                    .copy_owned_into(&e.shard, &full, self.pg.rank())
                    .map_err(|err| torch("ZeRO-3: loading a parameter shard", err))?;
            }
        }
        Ok(())
    }
}

/// A checkpoint file that does not fit this run's partition.
fn shard_file_error(file: &Path, message: impl std::fmt::Display) -> TrainerError {
    TrainerError::config(format!(
        "checkpoint {}: {message} (the checkpoint does not fit this run)",
        file.display()
    ))
}

impl Drop for ParameterPartition {
    fn drop(&mut self) {
        tracing::info!(
            used = self.prefetch_used.get(),
            discarded = self.prefetch_discarded.get(),
            "ZeRO-3 prefetches"
        );
    }
}

impl Residency for ParameterPartition {
    type Error = TrainerError;

    fn gather(&self, unit: Unit) -> Result<(), TrainerError> {
        let Some(idx) = self.units.get(&unit) else {
            return Ok(());
        };
        let pending = self.prefetch.borrow_mut().take();
        match pending {
            Some((u, pieces)) if u == unit => {
                self.prefetch_used.set(self.prefetch_used.get() + 1);
                self.finish_gather(pieces)?
            }
            Some((_, pieces)) => self.wait_out(pieces)?,
            None => {}
        }
        // What the prefetch did not cover (a tensor shared with the unit before, as a tied
        // embedding, was still whole when it started).
        self.gather_entries(idx)?;
        self.prefetch_after(unit)
    }

    fn release(&self, unit: Unit, gradients_ready: bool) -> Result<(), TrainerError> {
        let Some(idx) = self.units.get(&unit) else {
            return Ok(());
        };
        if gradients_ready {
            self.reduce_gradients(idx)?;
        }
        self.release_entries(idx)
    }

    fn lockstep(&self) -> bool {
        true
    }

    fn needs_recomputation(&self) -> bool {
        true
    }
}
