//! `neat_packing` (LLaMA-Factory's name): padding-free packing with examples that cannot see each
//! other. lf-trainer packs each micro-batch when it collates it: the micro-batch's examples go
//! first-fit-decreasing into rows of at most `cutoff_len` tokens ([`first_fit_decreasing`], the
//! rule `packing` uses for the whole dataset), each with position ids restarting at 0, so the
//! model attends block-diagonally (lf-model's `packing`). An optimiser step therefore trains on
//! the same examples, with the same loss and gradients, as without packing — only the padding is
//! gone. (LLaMA-Factory packs the dataset instead, so there a batch counts packed sequences.)

use crate::batch::{collate, Batch};
use crate::encode::{Example, IGNORE_INDEX};
use crate::pack::first_fit_decreasing;

/// The micro-batch `examples` packed into rows of at most `capacity` tokens, right-padded to the
/// longest row, with `position_ids` restarting at 0 at each example (and at the padding). Each
/// example's first label is masked: nothing of that example precedes it, as on a row of its own.
/// Token and label counts are those of the examples (padding-free); no examples give
/// [`Batch::label_free`].
pub fn collate_packed(examples: &[&Example], pad_id: u32, capacity: usize) -> Batch {
    if examples.is_empty() {
        return Batch::label_free(pad_id);
    }
    let lengths: Vec<usize> = examples.iter().map(|e| e.input_ids.len()).collect();
    let bins = first_fit_decreasing(&lengths, capacity);
    let mut rows = Vec::with_capacity(bins.len());
    let mut starts: Vec<Vec<usize>> = Vec::with_capacity(bins.len());
    for members in &bins {
        let mut row = Example::default();
        let mut row_starts = Vec::with_capacity(members.len());
        for &i in members {
            row_starts.push(row.input_ids.len());
            row.input_ids.extend_from_slice(&examples[i].input_ids);
            let first = row.labels.len();
            row.labels.extend_from_slice(&examples[i].labels);
            if let Some(l) = row.labels.get_mut(first) {
                *l = IGNORE_INDEX;
            }
        }
        rows.push(row);
        starts.push(row_starts);
    }
    let refs: Vec<&Example> = rows.iter().collect();
    let batch = collate(&refs, pad_id);
    let mut position_ids = vec![0i64; batch.batch_size * batch.seq_len];
    for (r, (row, row_starts)) in rows.iter().zip(&starts).enumerate() {
        let mut bounds = row_starts.clone();
        // The padding is a segment of its own (its labels are ignored).
        bounds.push(row.input_ids.len());
        let mut start = 0;
        for c in 0..batch.seq_len {
            if bounds.contains(&c) {
                start = c;
            }
            position_ids[r * batch.seq_len + c] = (c - start) as i64;
        }
    }
    Batch {
        examples: examples.len(),
        position_ids: Some(position_ids),
        ..batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ids: &[u32], labels: &[i32]) -> Example {
        Example {
            input_ids: ids.to_vec(),
            labels: labels.to_vec(),
            ..Example::default()
        }
    }

    #[test]
    fn rows_restart_positions_and_mask_each_first_label() {
        let a = ex(&[1, 2, 3], &[-100, 2, 3]);
        let b = ex(&[4, 5], &[4, 5]);
        let c = ex(&[6, 7, 8, 9], &[6, 7, 8, 9]);
        let packed = collate_packed(&[&a, &b, &c], 0, 6);
        // First-fit-decreasing into 6: [c (4) + b (2)] and [a (3)], each in input order.
        assert_eq!((packed.batch_size, packed.seq_len), (2, 6));
        assert_eq!(packed.input_ids, vec![4, 5, 6, 7, 8, 9, 1, 2, 3, 0, 0, 0]);
        assert_eq!(
            packed.labels,
            vec![-100, 5, -100, 7, 8, 9, -100, 2, 3, -100, -100, -100]
        );
        assert_eq!(
            packed.position_ids,
            Some(vec![0, 1, 0, 1, 2, 3, 0, 1, 2, 0, 1, 2])
        );
        // The same examples on rows of their own: the same counts.
        let plain = collate(&[&a, &b, &c], 0);
        assert_eq!(packed.label_tokens, plain.label_tokens);
        assert_eq!((packed.tokens, packed.examples), (plain.tokens, 3));
        assert_eq!(plain.batch_size * plain.seq_len, 12);
        assert_eq!(collate_packed(&[], 7, 6), Batch::label_free(7));
    }
}
