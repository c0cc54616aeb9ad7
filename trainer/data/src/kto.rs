//! KTO's KL sequences, as TRL's `KTOTrainer` builds them: the examples, in dataset order, are cut
//! into chunks of `per_device_train_batch_size`, and within each chunk the answers are rotated by
//! one, so example `i` is also scored as its prompt followed by example `i − 1`'s answer (the
//! first takes the last's). The KL term of the loss is the policy/reference log-ratio of these
//! mismatched sequences. They hang off each example as its second sequence
//! ([`Example::rejected`]), so a micro-batch collates as pairs do: the examples' rows, then their
//! KL rows.

use crate::encode::{prompt_answer, Example, IGNORE_INDEX};

/// The masked prompt and the answer of a KTO example (the labels are the prompt's
/// [`IGNORE_INDEX`] and then the answer's tokens).
fn split(example: &Example) -> (&[u32], &[u32]) {
    let prompt = example
        .labels
        .iter()
        .take_while(|&&l| l == IGNORE_INDEX)
        .count();
    example
        .input_ids
        .split_at(prompt.min(example.input_ids.len()))
}

/// Gives each example its KL sequence (see the module docs), cut to `cutoff_len` from the right
/// as TRL's collator cuts it.
pub fn attach_kl(examples: &mut [Example], chunk: usize, cutoff_len: usize) {
    for group in examples.chunks_mut(chunk.max(1)) {
        let n = group.len();
        let kl: Vec<Example> = (0..n)
            .map(|i| {
                let (prompt, _) = split(&group[i]);
                let (_, answer) = split(&group[(i + n - 1) % n]);
                let mut e = prompt_answer(prompt, answer);
                e.input_ids.truncate(cutoff_len);
                e.labels.truncate(cutoff_len);
                e
            })
            .collect();
        for (e, k) in group.iter_mut().zip(kl) {
            e.rejected = Some(Box::new(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::feedback;

    #[test]
    fn answers_rotate_by_one_within_each_chunk() {
        let mut examples: Vec<Example> = [
            (vec![1, 2], vec![10], true),
            (vec![3], vec![11, 12], false),
            (vec![4], vec![13], true),
            (vec![5, 6], vec![14, 15], false),
            (vec![7], vec![16], true),
        ]
        .into_iter()
        .map(|(p, a, d)| feedback(&p, &a, d, 100).0)
        .collect();
        attach_kl(&mut examples, 2, 100);
        let kl = |examples: &[Example], i: usize| {
            let k = examples[i].rejected.as_deref().unwrap();
            (k.input_ids.clone(), k.labels.clone())
        };
        // Chunk [0, 1]: 0 takes 1's answer, 1 takes 0's.
        assert_eq!(
            kl(&examples, 0),
            (vec![1, 2, 11, 12], vec![-100, -100, 11, 12])
        );
        assert_eq!(kl(&examples, 1), (vec![3, 10], vec![-100, 10]));
        assert_eq!(kl(&examples, 2).0, vec![4, 14, 15]);
        assert_eq!(kl(&examples, 3).0, vec![5, 6, 13]);
        // A chunk of one keeps its own answer.
        assert_eq!(kl(&examples, 4).0, vec![7, 16]);
        assert_eq!(examples[1].kto_tag, Some(false));
        // The cutoff cuts from the right.
        attach_kl(&mut examples, 2, 3);
        assert_eq!(kl(&examples, 0).0, vec![1, 2, 11]);
    }
}
