//! Which examples make up each optimiser step, deterministically from the seed, so a resumed run
//! sees exactly the batches the uninterrupted run would have; collation; and the background
//! thread that prepares the next steps while the current one computes.
//!
//! Epoch `e` visits the examples in a permutation seeded by `seed + e` (a fresh shuffle per
//! epoch, like Hugging Face's seeded sampler), cut into micro-batches of
//! `per_device_train_batch_size`; consecutive groups of `gradient_accumulation_steps`
//! micro-batches form one optimiser step, and an epoch's last step takes what is left. A step never
//! spans two epochs. The position of the run is therefore just the number of completed steps.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Label value that is not trained on.
pub const IGNORE_INDEX: i64 = -100;

/// One tokenised example (the shape `lf-data` produces).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub input_ids: Vec<u32>,
    /// Per position; `-100` where the token is not trained on.
    pub labels: Vec<i32>,
}

/// A padded micro-batch in host memory, row-major `[batch_size, seq_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
    pub batch_size: usize,
    pub seq_len: usize,
    /// Positions whose next-token label is trained on (the loss's denominator contribution).
    pub label_tokens: u64,
    /// Non-padding tokens (what throughput counts).
    pub tokens: u64,
}

/// Right-pads examples to the longest one (`pad_id` for inputs, −100 for labels).
pub fn collate(examples: &[&Example], pad_id: u32) -> HostBatch {
    let seq_len = examples
        .iter()
        .map(|e| e.input_ids.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let b = examples.len();
    let mut input_ids = vec![pad_id as i64; b * seq_len];
    let mut labels = vec![IGNORE_INDEX; b * seq_len];
    let mut label_tokens = 0;
    let mut tokens = 0;
    for (r, e) in examples.iter().enumerate() {
        for (c, &id) in e.input_ids.iter().enumerate() {
            input_ids[r * seq_len + c] = id as i64;
        }
        for (c, &l) in e.labels.iter().enumerate() {
            labels[r * seq_len + c] = l as i64;
            // Position c−1 predicts label c: the first label is never a target.
            if c > 0 && l as i64 != IGNORE_INDEX {
                label_tokens += 1;
            }
        }
        tokens += e.input_ids.len() as u64;
    }
    HostBatch {
        input_ids,
        labels,
        batch_size: b,
        seq_len,
        label_tokens,
        tokens,
    }
}

/// The deterministic step plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepPlan {
    pub num_examples: usize,
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
    /// Micro-batches in this step.
    pub micro_batches: u64,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded Fisher–Yates permutation of `0..n`.
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

impl StepPlan {
    /// Micro-batches per epoch (global, across ranks).
    pub fn batches_per_epoch(&self) -> u64 {
        let global = (self.batch_size * self.world_size.max(1)) as u64;
        (self.num_examples as u64).div_ceil(global.max(1))
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

    /// The fractional epoch after completing `steps` steps (for logs).
    pub fn epoch_after(&self, steps: u64) -> f64 {
        if steps == 0 {
            return 0.0;
        }
        let last = self.position(steps - 1);
        let done = last.batch_index + last.micro_batches;
        last.epoch as f64 + done as f64 / self.batches_per_epoch().max(1) as f64
    }

    /// The example indices of this rank's micro-batches of step `step`.
    pub fn step_indices(&self, step: u64) -> Vec<Vec<usize>> {
        let pos = self.position(step);
        let perm = permutation(self.num_examples, self.seed.wrapping_add(pos.epoch));
        let global = self.batch_size * self.world_size.max(1);
        (0..pos.micro_batches)
            .map(|m| {
                let start = (pos.batch_index + m) as usize * global + self.rank * self.batch_size;
                let end = (start + self.batch_size)
                    .min(perm.len())
                    .min((pos.batch_index + m + 1) as usize * global);
                perm.get(start..end.max(start))
                    .map(|s| s.to_vec())
                    .unwrap_or_default()
            })
            .filter(|rows| !rows.is_empty())
            .collect()
    }
}

/// The micro-batches of one optimiser step.
#[derive(Debug)]
pub struct StepBatches {
    pub step: u64,
    pub position: DataPosition,
    pub micro: Vec<HostBatch>,
}

/// Collates steps `start..end` on a background thread, at most `prefetch` steps ahead.
pub fn spawn_loader(
    plan: StepPlan,
    examples: Arc<Vec<Example>>,
    pad_id: u32,
    start: u64,
    end: u64,
    prefetch: usize,
) -> Receiver<StepBatches> {
    let (tx, rx) = sync_channel(prefetch.max(1));
    let spawned = std::thread::Builder::new()
        .name("lf-data".into())
        .spawn(move || {
            for step in start..end {
                let micro = plan
                    .step_indices(step)
                    .iter()
                    .map(|rows| {
                        let refs: Vec<&Example> = rows.iter().map(|&i| &examples[i]).collect();
                        collate(&refs, pad_id)
                    })
                    .collect();
                if tx
                    .send(StepBatches {
                        step,
                        position: plan.position(step),
                        micro,
                    })
                    .is_err()
                {
                    return; // the training loop stopped
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the data thread: {e}");
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(len: usize, prompt: usize) -> Example {
        Example {
            input_ids: (1..=len as u32).collect(),
            labels: (0..len)
                .map(|i| if i < prompt { -100 } else { i as i32 + 1 })
                .collect(),
        }
    }

    #[test]
    fn collate_pads_and_counts_shifted_labels() {
        let (a, b) = (ex(4, 2), ex(2, 0));
        let batch = collate(&[&a, &b], 0);
        assert_eq!((batch.batch_size, batch.seq_len), (2, 4));
        assert_eq!(batch.input_ids, vec![1, 2, 3, 4, 1, 2, 0, 0]);
        assert_eq!(batch.labels, vec![-100, -100, 3, 4, 1, 2, -100, -100]);
        // Row a: labels at 2,3; row b: label at 1 (position 0 is never a target).
        assert_eq!(batch.label_tokens, 3);
        assert_eq!(batch.tokens, 6);
    }

    #[test]
    fn plan_covers_each_epoch_once_and_is_deterministic() {
        let plan = StepPlan {
            num_examples: 10,
            batch_size: 3,
            grad_accum: 2,
            seed: 7,
            world_size: 1,
            rank: 0,
        };
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
    }

    #[test]
    fn ranks_split_each_global_batch() {
        let p0 = StepPlan {
            num_examples: 8,
            batch_size: 2,
            grad_accum: 1,
            seed: 1,
            world_size: 2,
            rank: 0,
        };
        let p1 = StepPlan { rank: 1, ..p0 };
        let mut all: Vec<usize> = (0..2)
            .flat_map(|s| [p0.step_indices(s), p1.step_indices(s)])
            .flatten()
            .flatten()
            .collect();
        all.sort();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn loader_yields_steps_in_order() {
        let plan = StepPlan {
            num_examples: 5,
            batch_size: 2,
            grad_accum: 1,
            seed: 0,
            world_size: 1,
            rank: 0,
        };
        let examples = Arc::new((0..5).map(|i| ex(3 + i, 1)).collect::<Vec<_>>());
        let rx = spawn_loader(plan, examples, 0, 1, 4, 2);
        let steps: Vec<u64> = rx.iter().map(|s| s.step).collect();
        assert_eq!(steps, vec![1, 2, 3]);
    }
}
