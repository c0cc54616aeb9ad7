//! Which examples make up each optimiser step on each rank, deterministically from the seed: the
//! one sampler that training and its resume rest on.
//!
//! Epoch `e` visits the examples in a permutation seeded by `seed + e` (a fresh shuffle per
//! epoch, like Hugging Face's seeded sampler). Global micro-batch `b` of an epoch is positions
//! `b·B·W .. (b+1)·B·W` of that permutation (`B` = per-device batch size, `W` = world size), and
//! rank `r` takes its rows `r·B ..` of it. Consecutive groups of `gradient_accumulation_steps`
//! micro-batches form one optimiser step, and an epoch's last step takes what is left. A step never
//! spans two epochs, so the position of a run is just the number of completed steps: a resumed
//! run continues with exactly the batches the uninterrupted run would have drawn.
//!
//! **The last global micro-batch of an epoch** usually holds fewer than `B·W` examples. Rank `r`
//! then takes its `B` rows as far as they go, and a rank past the end gets none: it runs a
//! label-free batch ([`crate::Batch::label_free`]), which adds no loss and zero gradients but keeps
//! every rank making the same passes and collectives (ZeRO-3 gathers weights in every pass). The
//! rule is the same for every world size and every ZeRO stage.
//!
//! Why not top the batch up from the start of the permutation, as PyTorch's
//! `DistributedSampler` pads? That repeats examples: world size `W` would train on some examples
//! twice per epoch where one process trains on them once, and the duplicated rows would weigh
//! twice in the step's gradient. With label-free padding the ranks together see exactly the
//! examples one process sees, once per epoch, in the same steps, so `W` ranks with per-device
//! batch `B` compute the gradient of one process with batch `B·W` — the equivalence the trainer's
//! ZeRO tests prove — and world size 1 needs no padding at all.

use std::ops::Range;

use serde::{Deserialize, Serialize};

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded Fisher–Yates permutation of `0..n` (SplitMix64 stream; stable across platforms).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    let mut state = splitmix(seed);
    for i in (1..n).rev() {
        state = splitmix(state);
        let j = (state % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// The deterministic step plan of one rank (saved in `trainer_state.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepPlan {
    pub num_examples: usize,
    /// Per-device micro-batch size.
    pub batch_size: usize,
    pub grad_accum: usize,
    pub seed: u64,
    /// Data-parallel ranks: each micro-batch of `batch_size × world_size` examples is split so
    /// rank `r` takes rows `r·batch_size ..`.
    pub world_size: usize,
    pub rank: usize,
}

/// Where a step's data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    /// Index of the step's first micro-batch within the epoch.
    pub batch_index: u64,
    /// Micro-batches in this step (the same on every rank).
    pub micro_batches: u64,
}

impl StepPlan {
    fn global_batch(&self) -> usize {
        (self.batch_size * self.world_size.max(1)).max(1)
    }

    /// Micro-batches per epoch (global, across ranks).
    pub fn batches_per_epoch(&self) -> u64 {
        (self.num_examples as u64).div_ceil(self.global_batch() as u64)
    }

    /// Optimiser steps per epoch (at least 1).
    pub fn steps_per_epoch(&self) -> u64 {
        self.batches_per_epoch()
            .div_ceil(self.grad_accum.max(1) as u64)
            .max(1)
    }

    /// Total optimiser steps: `max_steps` when positive, else `ceil(epochs × steps_per_epoch)`.
    pub fn total_steps(&self, num_train_epochs: f64, max_steps: i64) -> u64 {
        if max_steps > 0 {
            max_steps as u64
        } else {
            (num_train_epochs * self.steps_per_epoch() as f64)
                .ceil()
                .max(1.0) as u64
        }
    }

    /// Where step `step` (0-based) takes its data.
    pub fn position(&self, step: u64) -> DataPosition {
        let spe = self.steps_per_epoch();
        let epoch = step / spe;
        let batch_index = (step % spe) * self.grad_accum as u64;
        let micro_batches = (self.grad_accum as u64)
            .min(self.batches_per_epoch().saturating_sub(batch_index))
            .max(1);
        DataPosition {
            epoch,
            batch_index,
            micro_batches,
        }
    }

    /// Whether step `step` (0-based) ends its epoch.
    pub fn ends_epoch(&self, step: u64) -> bool {
        let pos = self.position(step);
        pos.batch_index + pos.micro_batches >= self.batches_per_epoch()
    }

    /// The fractional epoch after completing `steps` steps (for logs).
    pub fn epoch_after(&self, steps: u64) -> f64 {
        if steps == 0 {
            return 0.0;
        }
        let last = self.position(steps - 1);
        let done = last.batch_index + last.micro_batches;
        last.epoch as f64 + done as f64 / self.batches_per_epoch().max(1) as f64
    }

    /// The example indices of this rank's micro-batches of step `step`: always
    /// [`DataPosition::micro_batches`] of them, an empty one where this rank is past the end of
    /// the epoch's last global micro-batch (it runs a label-free batch, see the module docs).
    pub fn step_indices(&self, step: u64) -> Vec<Vec<usize>> {
        let pos = self.position(step);
        let perm = permutation(self.num_examples, self.seed.wrapping_add(pos.epoch));
        let global = self.global_batch();
        (0..pos.micro_batches)
            .map(|m| {
                let batch_start = (pos.batch_index + m) as usize * global;
                let batch_end = (batch_start + global).min(perm.len());
                let start = (batch_start + self.rank * self.batch_size).min(batch_end);
                let end = (start + self.batch_size).min(batch_end);
                perm[start..end].to_vec()
            })
            .collect()
    }
}

/// The evaluation batches of rank `rank` of `world_size` over `num_examples` examples in order:
/// consecutive chunks of `batch_size`, chunk `c` on rank `c mod world_size`. Every rank gets the
/// same number of rounds; an empty range is a round in which this rank has no chunk left and runs
/// a label-free batch (the training sampler's rule).
pub fn eval_rounds(
    num_examples: usize,
    batch_size: usize,
    rank: usize,
    world_size: usize,
) -> Vec<Range<usize>> {
    let (batch, world) = (batch_size.max(1), world_size.max(1));
    let rounds = num_examples.div_ceil(batch).div_ceil(world);
    (0..rounds)
        .map(|round| {
            let start = ((round * world + rank) * batch).min(num_examples);
            start..(start + batch).min(num_examples)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: usize, batch: usize, accum: usize, world: usize, rank: usize) -> StepPlan {
        StepPlan {
            num_examples: n,
            batch_size: batch,
            grad_accum: accum,
            seed: 7,
            world_size: world,
            rank,
        }
    }

    #[test]
    fn plan_covers_each_epoch_once_and_is_deterministic() {
        let plan = plan(10, 3, 2, 1, 0);
        assert_eq!(plan.batches_per_epoch(), 4);
        assert_eq!(plan.steps_per_epoch(), 2);
        assert_eq!(plan.total_steps(3.0, -1), 6);
        assert_eq!(plan.total_steps(3.0, 5), 5);
        let mut seen: Vec<usize> = (0..2)
            .flat_map(|s| plan.step_indices(s))
            .flatten()
            .collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(plan.step_indices(1), plan.step_indices(1));
        assert_ne!(
            plan.step_indices(0),
            plan.step_indices(2),
            "a new shuffle each epoch"
        );
        assert_eq!(
            plan.position(3),
            DataPosition {
                epoch: 1,
                batch_index: 2,
                micro_batches: 2
            }
        );
        assert!((plan.epoch_after(3) - 1.5).abs() < 1e-12);
        assert!(!plan.ends_epoch(0) && plan.ends_epoch(1) && plan.ends_epoch(3));
    }

    /// World sizes 1, 2 and 3 with the same global micro-batch see exactly the examples one
    /// process sees, in the same steps, each example once per epoch, the last partial batch
    /// included; every rank runs the same number of micro-batches.
    #[test]
    fn every_world_size_sees_what_one_process_sees() {
        for (n, accum) in [(23, 2), (24, 1), (7, 3), (1, 1), (13, 4)] {
            let one = plan(n, 6, accum, 1, 0);
            let steps = one.steps_per_epoch() * 2 + 1;
            for world in [1, 2, 3] {
                let ranks: Vec<StepPlan> = (0..world)
                    .map(|r| plan(n, 6 / world, accum, world, r))
                    .collect();
                assert_eq!(ranks[0].steps_per_epoch(), one.steps_per_epoch());
                let mut epoch_seen: Vec<Vec<usize>> = vec![Vec::new(); 3];
                for step in 0..steps {
                    let want = one.step_indices(step);
                    let per_rank: Vec<Vec<Vec<usize>>> =
                        ranks.iter().map(|p| p.step_indices(step)).collect();
                    for (r, micro) in per_rank.iter().enumerate() {
                        assert_eq!(
                            micro.len() as u64,
                            ranks[r].position(step).micro_batches,
                            "n {n} world {world} rank {r} step {step}: same passes on every rank"
                        );
                    }
                    for (m, rows) in want.iter().enumerate() {
                        let union: Vec<usize> =
                            per_rank.iter().flat_map(|micro| micro[m].clone()).collect();
                        assert_eq!(&union, rows, "n {n} world {world} step {step} micro {m}");
                    }
                    let epoch = one.position(step).epoch as usize;
                    epoch_seen[epoch].extend(per_rank.into_iter().flatten().flatten());
                }
                for seen in &mut epoch_seen[..2] {
                    seen.sort();
                    assert_eq!(*seen, (0..n).collect::<Vec<_>>(), "n {n} world {world}");
                }
            }
        }
    }

    /// A run interrupted after any step of an epoch and resumed from its saved plan (through
    /// `trainer_state.json`'s serialisation) continues with the batches of the uninterrupted run.
    #[test]
    fn resuming_at_every_step_continues_with_identical_batches() {
        for world in [1, 2, 3] {
            for rank in 0..world {
                let p = plan(17, 2, 2, world, rank);
                let steps = p.steps_per_epoch() * 2;
                let uninterrupted: Vec<Vec<Vec<usize>>> =
                    (0..steps).map(|s| p.step_indices(s)).collect();
                for stop in 0..=p.steps_per_epoch() {
                    let saved = serde_json::to_string(&(p, p.position(stop))).unwrap();
                    let (resumed, next): (StepPlan, DataPosition) =
                        serde_json::from_str(&saved).unwrap();
                    assert_eq!(resumed.position(stop), next);
                    let rest: Vec<Vec<Vec<usize>>> =
                        (stop..steps).map(|s| resumed.step_indices(s)).collect();
                    assert_eq!(
                        &uninterrupted[stop as usize..],
                        &rest[..],
                        "world {world} rank {rank} stop {stop}"
                    );
                }
            }
        }
    }

    #[test]
    fn evaluation_rounds_cover_the_examples_once() {
        for (n, batch, world) in [(16, 6, 2), (5, 2, 3), (0, 4, 2), (9, 3, 1)] {
            let all: Vec<Vec<Range<usize>>> = (0..world)
                .map(|r| eval_rounds(n, batch, r, world))
                .collect();
            assert!(
                all.iter().all(|r| r.len() == all[0].len()),
                "same rounds on every rank"
            );
            let mut seen: Vec<usize> = all.iter().flatten().flat_map(|r| r.clone()).collect();
            seen.sort();
            assert_eq!(seen, (0..n).collect::<Vec<_>>());
        }
        // 16 examples in chunks of 6 on 2 ranks: rank 1 has no third chunk.
        assert_eq!(eval_rounds(16, 6, 1, 2), vec![6..12, 16..16]);
    }
}
