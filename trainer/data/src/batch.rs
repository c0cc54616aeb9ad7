//! Collation: examples right-padded into one host batch, with the token counts the loop's exact
//! loss averaging and throughput need; preference pairs as one batch of their chosen rows then
//! their rejected rows, so that one forward pass scores both.

use crate::encode::{Example, IGNORE_INDEX};

/// A right-padded micro-batch in host memory, row-major `[batch_size, seq_len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub input_ids: Vec<i64>,
    /// [`IGNORE_INDEX`] on masked and padding positions.
    pub labels: Vec<i64>,
    /// Rows of the tensors.
    pub batch_size: usize,
    pub seq_len: usize,
    /// Examples in the batch (0 for a [`Batch::label_free`] one, which still has a row).
    pub examples: usize,
    /// Labels the causal loss actually uses: positions `t ≥ 1` whose label is not
    /// [`IGNORE_INDEX`] (the label at position 0 has no preceding token to predict it). The
    /// denominator for exact loss averaging.
    pub label_tokens: u64,
    /// Non-padding tokens (what throughput counts).
    pub tokens: u64,
    /// Row-major `[batch_size, seq_len]`: 1 on each row's tokens, 0 on its padding (the
    /// attention mask LLaMA-Factory's collator gives the model; a mixture of experts leaves
    /// padding out of its load-balancing loss by it).
    pub attention_mask: Vec<i64>,
    /// Preference pairs: rows `0..examples` are the chosen sequences and rows
    /// `examples..2·examples` the rejected ones, in the same order (for `stage: kto`, the
    /// examples and then their KL sequences).
    pub paired: bool,
    /// `stage: kto`: whether each example (row `i < examples`) is desirable; empty otherwise.
    pub desirable: Vec<bool>,
    /// `neat_packing`: row-major `[batch_size, seq_len]` positions restarting at 0 at each packed
    /// example ([`crate::collate_packed`]); `None`: every row is one example at `0..seq_len`.
    pub position_ids: Option<Vec<i64>>,
}

impl Batch {
    /// One row of two padding tokens without labels: what a rank runs when the sampler has no
    /// examples left for it (see [`crate::sampler`]). It contributes no loss, zero gradients and
    /// nothing to the token counts.
    pub fn label_free(pad_id: u32) -> Batch {
        Batch {
            input_ids: vec![i64::from(pad_id); 2],
            labels: vec![i64::from(IGNORE_INDEX); 2],
            batch_size: 1,
            seq_len: 2,
            examples: 0,
            label_tokens: 0,
            tokens: 0,
            attention_mask: vec![0; 2],
            paired: false,
            desirable: Vec::new(),
            position_ids: None,
        }
    }
}

/// Right-pads `examples` to the longest one (at least 2 positions, so that one next-token
/// prediction exists): `pad_id` for inputs, [`IGNORE_INDEX`] for labels. No examples give
/// [`Batch::label_free`].
pub fn collate(examples: &[&Example], pad_id: u32) -> Batch {
    if examples.is_empty() {
        return Batch::label_free(pad_id);
    }
    let seq_len = examples
        .iter()
        .map(|e| e.input_ids.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let batch_size = examples.len();
    let mut input_ids = vec![i64::from(pad_id); batch_size * seq_len];
    let mut labels = vec![i64::from(IGNORE_INDEX); batch_size * seq_len];
    let mut label_tokens = 0;
    let mut tokens = 0;
    let mut attention_mask = vec![0; batch_size * seq_len];
    for (row, e) in examples.iter().enumerate() {
        let base = row * seq_len;
        for (c, &id) in e.input_ids.iter().enumerate() {
            input_ids[base + c] = i64::from(id);
        }
        for (c, &label) in e.labels.iter().enumerate() {
            labels[base + c] = i64::from(label);
            // Position c−1 predicts label c: the first label is never a target.
            if c > 0 && label != IGNORE_INDEX {
                label_tokens += 1;
            }
        }
        tokens += e.input_ids.len() as u64;
        attention_mask[base..base + e.input_ids.len()].fill(1);
    }
    Batch {
        input_ids,
        labels,
        batch_size,
        seq_len,
        examples: batch_size,
        label_tokens,
        tokens,
        attention_mask,
        paired: false,
        desirable: Vec::new(),
        position_ids: None,
    }
}

/// Collates preference pairs (examples holding their rejected sequence): the chosen sequences,
/// then the rejected ones, padded to the longest of all. An example without a rejected sequence
/// is not a pair and is left out. No pairs give [`Batch::label_free`].
pub fn collate_pairs(pairs: &[&Example], pad_id: u32) -> Batch {
    let chosen: Vec<&Example> = pairs
        .iter()
        .filter(|e| e.rejected.is_some())
        .copied()
        .collect();
    let rejected = chosen.iter().filter_map(|e| e.rejected.as_deref());
    let rows: Vec<&Example> = chosen.iter().copied().chain(rejected).collect();
    if rows.is_empty() {
        return Batch::label_free(pad_id);
    }
    Batch {
        examples: chosen.len(),
        paired: true,
        desirable: chosen.iter().filter_map(|e| e.kto_tag).collect(),
        ..collate(&rows, pad_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ids: &[u32], labels: &[i32]) -> Example {
        Example {
            input_ids: ids.to_vec(),
            labels: labels.to_vec(),
            rejected: None,
            kto_tag: None,
        }
    }

    #[test]
    fn pairs_collate_chosen_rows_then_rejected_rows() {
        let mut a = ex(&[1, 2, 3], &[-100, 2, 3]);
        a.rejected = Some(Box::new(ex(&[1, 4], &[-100, 4])));
        let mut b = ex(&[5, 6], &[-100, 6]);
        b.rejected = Some(Box::new(ex(&[5, 7, 8, 9], &[-100, 7, 8, 9])));
        let batch = collate_pairs(&[&a, &b], 0);
        assert!(batch.paired);
        assert_eq!((batch.batch_size, batch.seq_len, batch.examples), (4, 4, 2));
        assert_eq!(
            batch.input_ids,
            vec![1, 2, 3, 0, 5, 6, 0, 0, 1, 4, 0, 0, 5, 7, 8, 9]
        );
        assert_eq!(batch.label_tokens, 2 + 1 + 1 + 3);
        assert_eq!(collate_pairs(&[], 0), Batch::label_free(0));
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
        assert_eq!((batch.tokens, batch.examples), (6, 2));
        // By each row's length, not by the pad id (a real token may equal it).
        assert_eq!(batch.attention_mask, vec![1, 1, 1, 1, 1, 1, 0, 0]);
    }

    #[test]
    fn no_examples_collate_to_the_label_free_batch() {
        let b = collate(&[], 3);
        assert_eq!(b, Batch::label_free(3));
        assert_eq!((b.batch_size, b.seq_len), (1, 2));
        assert_eq!(b.input_ids, vec![3, 3]);
        assert_eq!((b.examples, b.label_tokens, b.tokens), (0, 0, 0));
        assert_eq!(b.attention_mask, vec![0, 0]);
        // One token still gives two positions.
        let short = collate(&[&ex(&[4], &[4])], 0);
        assert_eq!((short.seq_len, short.label_tokens, short.tokens), (2, 0, 1));
    }
}
