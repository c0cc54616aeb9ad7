//! Collation and the deterministic batch order.
//!
//! [`BatchPlan`] visits each epoch in a fresh permutation seeded by `seed + epoch` (so a resumed
//! run reproduces the uninterrupted one from `(epoch, batch index)` alone). Global batch `b` of an
//! epoch is positions `b·B·W .. (b+1)·B·W` of that permutation (`B` = per-device batch size,
//! `W` = world size), and rank `r` takes its `r`-th slice of `B`. When `W` does not divide the last
//! global batch, that batch is topped up from the start of the permutation (as PyTorch's
//! `DistributedSampler` pads) so every rank steps the same number of times with a non-empty batch.

use crate::encode::{Example, IGNORE_INDEX};

/// A right-padded batch in host memory, row-major `[batch_size, seq_len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub input_ids: Vec<i64>,
    /// `-100` on masked and padding positions.
    pub labels: Vec<i64>,
    pub batch_size: usize,
    pub seq_len: usize,
    /// Labels the causal loss actually uses: positions `t ≥ 1` whose label is not `-100` (the label at
    /// position 0 has no preceding token to predict it). The denominator for exact loss averaging.
    pub label_tokens: usize,
}

/// Pads `examples` to the longest with `pad_id` (labels `-100`).
pub fn collate(examples: &[&Example], pad_id: u32) -> Batch {
    let seq_len = examples
        .iter()
        .map(|e| e.input_ids.len())
        .max()
        .unwrap_or(0);
    let batch_size = examples.len();
    let mut input_ids = vec![i64::from(pad_id); batch_size * seq_len];
    let mut labels = vec![i64::from(IGNORE_INDEX); batch_size * seq_len];
    let mut label_tokens = 0;
    for (row, e) in examples.iter().enumerate() {
        let base = row * seq_len;
        for (c, (&id, &label)) in e.input_ids.iter().zip(&e.labels).enumerate() {
            input_ids[base + c] = i64::from(id);
            labels[base + c] = i64::from(label);
            if c > 0 && label != IGNORE_INDEX {
                label_tokens += 1;
            }
        }
    }
    Batch {
        input_ids,
        labels,
        batch_size,
        seq_len,
        label_tokens,
    }
}

/// The deterministic, resumable, rank-sharded order of batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPlan {
    pub num_examples: usize,
    /// Per-device batch size.
    pub batch_size: usize,
    pub seed: u64,
    pub rank: usize,
    pub world_size: usize,
}

/// One of this rank's batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBatch {
    pub epoch: u64,
    /// Index of the batch within the epoch (same on every rank).
    pub index: usize,
    /// Example indices of this rank's slice.
    pub examples: Vec<usize>,
}

impl BatchPlan {
    /// A plan over `num_examples` examples; `batch_size` and `world_size` are at least 1.
    pub fn new(
        num_examples: usize,
        batch_size: usize,
        seed: u64,
        rank: usize,
        world_size: usize,
    ) -> Self {
        BatchPlan {
            num_examples,
            batch_size: batch_size.max(1),
            seed,
            rank,
            world_size: world_size.max(1),
        }
    }

    /// Global batches per epoch (the number of batches each rank sees per epoch).
    pub fn batches_per_epoch(&self) -> usize {
        self.num_examples
            .div_ceil(self.batch_size * self.world_size)
    }

    /// The epoch's order of all example indices.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        permutation(self.num_examples, self.seed.wrapping_add(epoch))
    }

    /// This rank's example indices of batch `index` of `epoch` (empty past the epoch's end).
    pub fn batch(&self, epoch: u64, index: usize) -> Vec<usize> {
        self.slice(&self.epoch_order(epoch), index)
    }

    fn slice(&self, order: &[usize], index: usize) -> Vec<usize> {
        let global = self.batch_size * self.world_size;
        let start = index * global;
        if start >= order.len() {
            return Vec::new();
        }
        let len = (order.len() - start).min(global);
        // The last global batch splits evenly across ranks, topped up from the epoch's start.
        let per_rank = if len == global {
            self.batch_size
        } else {
            len.div_ceil(self.world_size)
        };
        (0..per_rank)
            .map(|i| order[(start + self.rank * per_rank + i) % order.len()])
            .collect()
    }

    /// This rank's batches from `(epoch, index)` on, across epochs, forever (the caller stops).
    pub fn iter_from(&self, epoch: u64, index: usize) -> impl Iterator<Item = PlannedBatch> + '_ {
        let per_epoch = self.batches_per_epoch();
        let mut state = (epoch, index, self.epoch_order(epoch));
        std::iter::from_fn(move || {
            if per_epoch == 0 {
                return None;
            }
            if state.1 >= per_epoch {
                state = (state.0 + 1, 0, self.epoch_order(state.0 + 1));
            }
            let out = PlannedBatch {
                epoch: state.0,
                index: state.1,
                examples: self.slice(&state.2, state.1),
            };
            state.1 += 1;
            Some(out)
        })
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ids: &[u32], labels: &[i32]) -> Example {
        Example {
            input_ids: ids.to_vec(),
            labels: labels.to_vec(),
        }
    }

    #[test]
    fn collate_right_pads_and_counts_used_labels() {
        let a = ex(&[5, 6, 7, 8], &[-100, -100, 7, 8]);
        let b = ex(&[9, 10], &[9, 10]);
        let batch = collate(&[&a, &b], 0);
        assert_eq!((batch.batch_size, batch.seq_len), (2, 4));
        assert_eq!(batch.input_ids, vec![5, 6, 7, 8, 9, 10, 0, 0]);
        assert_eq!(batch.labels, vec![-100, -100, 7, 8, 9, 10, -100, -100]);
        // a: positions 2, 3; b: position 1 (position 0 predicts nothing).
        assert_eq!(batch.label_tokens, 3);
    }

    #[test]
    fn each_epoch_is_a_fresh_permutation_covering_everything() {
        let plan = BatchPlan::new(10, 3, 7, 0, 1);
        assert_eq!(plan.batches_per_epoch(), 4);
        let e0: Vec<usize> = (0..4).flat_map(|i| plan.batch(0, i)).collect();
        let e1: Vec<usize> = (0..4).flat_map(|i| plan.batch(1, i)).collect();
        let mut sorted = e0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(e0, e1);
        assert_eq!(
            plan.batch(0, 2),
            BatchPlan::new(10, 3, 7, 0, 1).batch(0, 2),
            "deterministic"
        );
    }

    #[test]
    fn resuming_continues_the_same_sequence() {
        let plan = BatchPlan::new(7, 2, 3, 0, 1);
        let all: Vec<PlannedBatch> = plan.iter_from(0, 0).take(10).collect();
        let resumed: Vec<PlannedBatch> =
            plan.iter_from(all[5].epoch, all[5].index).take(5).collect();
        assert_eq!(&all[5..], &resumed[..]);
        assert_eq!(all[4].epoch, 1, "4 batches per epoch");
    }

    #[test]
    fn ranks_share_every_global_batch_evenly() {
        let (n, b, w) = (11, 2, 3);
        let plans: Vec<BatchPlan> = (0..w).map(|r| BatchPlan::new(n, b, 5, r, w)).collect();
        assert_eq!(plans[0].batches_per_epoch(), 2);
        let mut seen = Vec::new();
        for i in 0..2 {
            let slices: Vec<Vec<usize>> = plans.iter().map(|p| p.batch(0, i)).collect();
            let sizes: Vec<usize> = slices.iter().map(Vec::len).collect();
            assert!(sizes.iter().all(|&s| s == sizes[0] && s > 0), "{sizes:?}");
            seen.extend(slices.into_iter().flatten());
        }
        // 11 examples, 12 slots: one example repeats in the padded last batch.
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique, (0..n).collect::<Vec<_>>());
        assert_eq!(seen.len(), 12);
    }
}
