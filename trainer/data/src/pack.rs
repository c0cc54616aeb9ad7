//! Packing several examples into sequences of at most `cutoff_len` tokens.

use crate::encode::Example;

/// SFT packing: first-fit-decreasing bins of capacity `cutoff_len` (deterministic: ties keep input
/// order), each bin's examples concatenated in input order. Examples attend across their
/// boundaries inside a bin, as with LLaMA-Factory's `packing` (not `neat_packing`).
pub fn pack_examples(examples: Vec<Example>, cutoff_len: usize) -> Vec<Example> {
    let lengths: Vec<usize> = examples.iter().map(|e| e.input_ids.len()).collect();
    first_fit_decreasing(&lengths, cutoff_len)
        .into_iter()
        .map(|members| {
            let mut packed = Example::default();
            for i in members {
                packed.input_ids.extend_from_slice(&examples[i].input_ids);
                packed.labels.extend_from_slice(&examples[i].labels);
            }
            packed
        })
        .collect()
}

/// First-fit-decreasing bins of capacity `capacity` over items of `lengths` (deterministic: ties
/// keep input order; an item longer than `capacity` gets a bin of its own): each bin's item
/// indices in input order, bins in the order they were opened.
pub fn first_fit_decreasing(lengths: &[usize], capacity: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut bins: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in order {
        let len = lengths[i];
        match bins.iter_mut().find(|(used, _)| used + len <= capacity) {
            Some((used, members)) => {
                *used += len;
                members.push(i);
            }
            None => bins.push((len, vec![i])),
        }
    }
    bins.into_iter()
        .map(|(_, mut members)| {
            members.sort_unstable();
            members
        })
        .collect()
}

/// Pre-training packing (LLaMA-Factory's `PretrainDatasetProcessor`): all texts concatenated and cut
/// into blocks of `cutoff_len`; with `bos`, each block's first token is replaced by BOS. Unlike
/// LLaMA-Factory the final partial block is kept (it is padded at collation), so no text is lost.
pub fn pack_text(examples: Vec<Example>, cutoff_len: usize, bos: Option<u32>) -> Vec<Example> {
    let all: Vec<u32> = examples.into_iter().flat_map(|e| e.input_ids).collect();
    all.chunks(cutoff_len.max(1))
        .map(|chunk| {
            let mut ids = chunk.to_vec();
            if let (Some(b), Some(first)) = (bos, ids.first_mut()) {
                *first = b;
            }
            crate::encode::pretraining(ids)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(len: usize, tag: u32) -> Example {
        Example {
            input_ids: vec![tag; len],
            labels: vec![tag as i32; len],
            rejected: None,
            kto_tag: None,
        }
    }

    #[test]
    fn first_fit_decreasing_respects_capacity_and_keeps_all_tokens() {
        let input = vec![ex(5, 1), ex(3, 2), ex(4, 3), ex(2, 4), ex(6, 5)];
        let packed = pack_examples(input, 8);
        assert!(packed.iter().all(|e| e.input_ids.len() <= 8));
        assert_eq!(packed.iter().map(|e| e.input_ids.len()).sum::<usize>(), 20);
        assert_eq!(packed.len(), 3);
        // The bin holding the 6- and 2-token examples concatenates them in input order.
        assert!(packed
            .iter()
            .any(|e| e.input_ids == vec![4, 4, 5, 5, 5, 5, 5, 5]));
    }

    #[test]
    fn text_blocks_keep_the_tail() {
        let packed = pack_text(vec![ex(5, 1), ex(4, 2)], 4, Some(9));
        let lens: Vec<usize> = packed.iter().map(|e| e.input_ids.len()).collect();
        assert_eq!(lens, vec![4, 4, 1]);
        assert_eq!(packed[1].input_ids, vec![9, 2, 2, 2]);
    }
}
