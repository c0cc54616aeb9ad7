//! The background thread that collates the next steps' micro-batches while the current step
//! computes. What each step trains on is lf-data's [`StepPlan`]; how a micro-batch is padded is
//! lf-data's [`collate`], or with `neat_packing` [`collate_packed`] (the micro-batch's examples
//! packed into rows of at most `cutoff_len` tokens).

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use lf_data::{collate, collate_packed, collate_pairs, Batch, DataPosition, Example, StepPlan};

/// The micro-batches of one optimiser step on this rank: always `position.micro_batches` of them
/// (label-free ones where this rank has no examples left, see [`lf_data::sampler`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StepBatches {
    pub step: u64,
    pub position: DataPosition,
    pub micro: Vec<Batch>,
}

/// Collates step `step` of `plan`; `pack`: `neat_packing`'s row capacity (`cutoff_len`).
pub fn step_batches(
    plan: &StepPlan,
    examples: &[Example],
    pad_id: u32,
    pack: Option<usize>,
    step: u64,
) -> StepBatches {
    let micro = plan
        .step_indices(step)
        .iter()
        .map(|rows| {
            let refs: Vec<&Example> = rows.iter().map(|&i| &examples[i]).collect();
            // Preference pairs go into one batch of chosen then rejected rows.
            if refs.iter().any(|e| e.rejected.is_some()) {
                collate_pairs(&refs, pad_id)
            } else if let Some(capacity) = pack {
                collate_packed(&refs, pad_id, capacity)
            } else {
                collate(&refs, pad_id)
            }
        })
        .collect();
    StepBatches {
        step,
        position: plan.position(step),
        micro,
    }
}

/// Collates steps `start..end` on a background thread, at most `prefetch` steps ahead (`pack`:
/// see [`step_batches`]).
pub fn spawn_loader(
    plan: StepPlan,
    examples: Arc<Vec<Example>>,
    pad_id: u32,
    pack: Option<usize>,
    start: u64,
    end: u64,
    prefetch: usize,
) -> Receiver<StepBatches> {
    let (tx, rx) = sync_channel(prefetch.max(1));
    let spawned = std::thread::Builder::new()
        .name("lf-data".into())
        .spawn(move || {
            for step in start..end {
                if tx
                    .send(step_batches(&plan, &examples, pad_id, pack, step))
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

    fn examples(n: usize) -> Arc<Vec<Example>> {
        Arc::new(
            (0..n)
                .map(|i| Example {
                    input_ids: (1..=3 + i as u32).collect(),
                    labels: (0..3 + i as i32)
                        .map(|j| if j < 1 { -100 } else { j + 1 })
                        .collect(),
                    rejected: None,
                    kto_tag: None,
                })
                .collect(),
        )
    }

    fn plan(n: usize, world: usize, rank: usize) -> StepPlan {
        StepPlan {
            num_examples: n,
            batch_size: 2,
            grad_accum: 2,
            seed: 3,
            world_size: world,
            rank,
        }
    }

    #[test]
    fn loader_yields_steps_in_order() {
        let p = StepPlan {
            grad_accum: 1,
            ..plan(5, 1, 0)
        };
        let rx = spawn_loader(p, examples(5), 0, None, 1, 4, 2);
        let steps: Vec<u64> = rx.iter().map(|s| s.step).collect();
        assert_eq!(steps, vec![1, 2, 3]);
    }

    /// With `neat_packing` a step trains on the same examples, tokens and label tokens as
    /// without it, in fewer padded positions.
    #[test]
    fn packed_steps_hold_the_same_examples() {
        let data = examples(11);
        let p = plan(11, 1, 0);
        for step in 0..p.steps_per_epoch() {
            let plain = step_batches(&p, &data, 0, None, step);
            let packed = step_batches(&p, &data, 0, Some(16), step);
            for (a, b) in plain.micro.iter().zip(&packed.micro) {
                assert_eq!(
                    (a.examples, a.tokens, a.label_tokens),
                    (b.examples, b.tokens, b.label_tokens)
                );
                assert!(b.position_ids.is_some() && a.position_ids.is_none());
                assert!(b.batch_size * b.seq_len <= a.batch_size * a.seq_len);
            }
        }
    }

    /// A loader started at any step of an epoch (a resumed run) yields the batches the
    /// uninterrupted run's loader yields from there, on every rank of every world size; every
    /// rank gets the same number of micro-batches.
    #[test]
    fn a_loader_resumed_at_every_step_yields_the_uninterrupted_batches() {
        let data = examples(11);
        for world in [1, 2, 3] {
            for rank in 0..world {
                let p = plan(11, world, rank);
                let end = p.steps_per_epoch() * 2;
                let full: Vec<StepBatches> = spawn_loader(p, data.clone(), 0, None, 0, end, 2)
                    .iter()
                    .collect();
                assert_eq!(full.len() as u64, end);
                for s in &full {
                    assert_eq!(s.micro.len() as u64, s.position.micro_batches);
                }
                for start in 0..=p.steps_per_epoch() {
                    let resumed: Vec<StepBatches> =
                        spawn_loader(p, data.clone(), 0, None, start, end, 2)
                            .iter()
                            .collect();
                    assert_eq!(
                        &full[start as usize..],
                        &resumed[..],
                        "world {world} rank {rank} from step {start}"
                    );
                }
            }
        }
    }
}
