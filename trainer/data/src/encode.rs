//! Turning tokenised (prompt, response) pairs into one training example, with LLaMA-Factory's
//! truncation (`infer_seqlen`) and label masking (`SupervisedDatasetProcessor`), preference pairs
//! (`PairwiseDatasetProcessor`), and plain-text examples for pre-training.

/// Label value ignored by the loss (PyTorch's `ignore_index`). The one definition: host batches
/// widen it to i64, and lf-model's loss uses it as `lf_model::IGNORE_INDEX`.
pub const IGNORE_INDEX: i32 = -100;

/// One tokenised example.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Example {
    pub input_ids: Vec<u32>,
    /// Same length as `input_ids`; [`IGNORE_INDEX`] where the token is not trained on.
    pub labels: Vec<i32>,
    /// The second sequence scored with this one: a preference pair's rejected sequence (the same
    /// prompt, the rejected answer) when this example holds the chosen one, or a KTO example's KL
    /// sequence (its prompt with another example's answer, [`crate::kto::attach_kl`]); `None`
    /// otherwise, and always `None` inside it.
    pub rejected: Option<Box<Example>>,
    /// `stage: kto`: whether the answer is desirable (`None` for other stages).
    pub kto_tag: Option<bool>,
}

impl Example {
    /// Whether any position is trained on.
    pub fn has_labels(&self) -> bool {
        self.labels.iter().any(|&l| l != IGNORE_INDEX)
    }
}

/// The data options that shape an SFT example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    pub cutoff_len: usize,
    /// Train on prompt tokens too.
    pub train_on_prompt: bool,
    /// Train on the last assistant turn only.
    pub mask_history: bool,
}

/// How long the source and target may stay within `cutoff_len` (LLaMA-Factory's `infer_seqlen`):
/// a short target is kept whole; else a short source is kept whole; else both are cut in
/// proportion to their lengths. The source gets whatever the target leaves.
pub fn infer_seqlen(source_len: usize, target_len: usize, cutoff_len: usize) -> (usize, usize) {
    let max_target_len = if target_len * 2 < cutoff_len {
        cutoff_len
    } else if source_len * 2 < cutoff_len {
        cutoff_len - source_len
    } else {
        // Python's int(cutoff * (t / (s + t))) truncates toward zero.
        (cutoff_len as f64 * (target_len as f64 / (source_len + target_len) as f64)) as usize
    };
    let new_target = max_target_len.min(target_len);
    let new_source = cutoff_len.saturating_sub(new_target).min(source_len);
    (new_source, new_target)
}

/// Builds an SFT example from per-turn (prompt ids, response ids) pairs. Returns the example and
/// whether anything was cut off.
pub fn supervised(pairs: &[(Vec<u32>, Vec<u32>)], opts: EncodeOptions) -> (Example, bool) {
    let mut input_ids: Vec<u32> = Vec::new();
    let mut labels: Vec<i32> = Vec::new();
    let mut total = 0usize;
    let mut truncated = false;
    // With mask_history the last turns have priority: walk them newest first, prepending.
    let order: Vec<usize> = if opts.mask_history {
        (0..pairs.len()).rev().collect()
    } else {
        (0..pairs.len()).collect()
    };
    for (turn_idx, &i) in order.iter().enumerate() {
        let (source, target) = &pairs[i];
        if total >= opts.cutoff_len {
            truncated = true;
            break;
        }
        let (s_len, t_len) = infer_seqlen(source.len(), target.len(), opts.cutoff_len - total);
        truncated |= s_len < source.len() || t_len < target.len();
        let source = &source[..s_len];
        let target = &target[..t_len];
        total += s_len + t_len;
        let source_label: Vec<i32> = if opts.train_on_prompt {
            source.iter().map(|&t| t as i32).collect()
        } else {
            vec![IGNORE_INDEX; s_len]
        };
        let target_label: Vec<i32> = if opts.mask_history && turn_idx != 0 {
            vec![IGNORE_INDEX; t_len]
        } else {
            target.iter().map(|&t| t as i32).collect()
        };
        if opts.mask_history {
            let mut ids = source.to_vec();
            ids.extend_from_slice(target);
            ids.extend_from_slice(&input_ids);
            input_ids = ids;
            let mut l = source_label;
            l.extend(target_label);
            l.extend_from_slice(&labels);
            labels = l;
        } else {
            input_ids.extend_from_slice(source);
            input_ids.extend_from_slice(target);
            labels.extend(source_label);
            labels.extend(target_label);
        }
    }
    (
        Example {
            input_ids,
            labels,
            rejected: None,
            kto_tag: None,
        },
        truncated,
    )
}

/// A pre-training example: every token is a label.
pub fn pretraining(ids: Vec<u32>) -> Example {
    let labels = ids.iter().map(|&t| t as i32).collect();
    Example {
        input_ids: ids,
        labels,
        rejected: None,
        kto_tag: None,
    }
}

/// A preference pair as LLaMA-Factory builds it: the prompt (every turn before the answer, masked)
/// followed by the chosen, and by the rejected answer. `cutoff_len` is shared as [`infer_seqlen`]
/// shares it, with the longer of the two answers as the target, and both answers are cut to the
/// same length. Returns the chosen example (holding the rejected one) and whether anything was cut.
pub fn pairwise(
    prompt: &[u32],
    chosen: &[u32],
    rejected: &[u32],
    cutoff_len: usize,
) -> (Example, bool) {
    let longer = chosen.len().max(rejected.len());
    let (s_len, t_len) = infer_seqlen(prompt.len(), longer, cutoff_len);
    let truncated = s_len < prompt.len() || t_len < longer;
    let mut example = prompt_answer(&prompt[..s_len], &answer_prefix(chosen, t_len));
    example.rejected = Some(Box::new(prompt_answer(
        &prompt[..s_len],
        &answer_prefix(rejected, t_len),
    )));
    (example, truncated)
}

fn answer_prefix(answer: &[u32], len: usize) -> Vec<u32> {
    answer[..len.min(answer.len())].to_vec()
}

/// `prompt` (masked) followed by `answer` (trained on).
pub fn prompt_answer(prompt: &[u32], answer: &[u32]) -> Example {
    let mut input_ids = prompt.to_vec();
    input_ids.extend_from_slice(answer);
    let mut labels = vec![IGNORE_INDEX; prompt.len()];
    labels.extend(answer.iter().map(|&t| t as i32));
    Example {
        input_ids,
        labels,
        ..Example::default()
    }
}

/// A KTO example as LLaMA-Factory's feedback processor builds it: the prompt (masked) and the
/// answer, `cutoff_len` shared as [`infer_seqlen`] shares it, tagged `desirable` or not.
/// Returns the example and whether anything was cut.
pub fn feedback(
    prompt: &[u32],
    answer: &[u32],
    desirable: bool,
    cutoff_len: usize,
) -> (Example, bool) {
    let (s_len, t_len) = infer_seqlen(prompt.len(), answer.len(), cutoff_len);
    let truncated = s_len < prompt.len() || t_len < answer.len();
    let mut example = prompt_answer(&prompt[..s_len], &answer[..t_len]);
    example.kto_tag = Some(desirable);
    (example, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infer_seqlen_follows_llama_factory() {
        // Short target: kept whole, source cut.
        assert_eq!(infer_seqlen(100, 10, 50), (40, 10));
        // Short source: kept whole, target cut.
        assert_eq!(infer_seqlen(10, 100, 50), (10, 40));
        // Both long: proportional, int() truncation on the target.
        assert_eq!(infer_seqlen(60, 40, 50), (30, 20));
        assert_eq!(infer_seqlen(70, 30, 33), (24, 9));
        // Everything fits.
        assert_eq!(infer_seqlen(3, 4, 50), (3, 4));
    }

    fn pairs() -> Vec<(Vec<u32>, Vec<u32>)> {
        vec![(vec![1, 2], vec![3]), (vec![4, 5], vec![6, 7])]
    }

    #[test]
    fn every_prompt_turn_is_masked() {
        let opts = EncodeOptions {
            cutoff_len: 100,
            train_on_prompt: false,
            mask_history: false,
        };
        let (e, truncated) = supervised(&pairs(), opts);
        assert_eq!(e.input_ids, vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(e.labels, vec![-100, -100, 3, -100, -100, 6, 7]);
        assert!(!truncated);
        let (e, _) = supervised(
            &pairs(),
            EncodeOptions {
                train_on_prompt: true,
                ..opts
            },
        );
        assert_eq!(e.labels, vec![1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn mask_history_trains_the_last_turn_only() {
        let opts = EncodeOptions {
            cutoff_len: 100,
            train_on_prompt: false,
            mask_history: true,
        };
        let (e, _) = supervised(&pairs(), opts);
        assert_eq!(e.input_ids, vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(e.labels, vec![-100, -100, -100, -100, -100, 6, 7]);
        // Under a tight cutoff the last turn survives, the first is dropped.
        let (e, truncated) = supervised(
            &pairs(),
            EncodeOptions {
                cutoff_len: 4,
                ..opts
            },
        );
        assert_eq!(e.input_ids, vec![4, 5, 6, 7]);
        assert!(truncated);
    }

    #[test]
    fn pairs_share_the_prompt_and_cut_both_answers_alike() {
        let (e, truncated) = pairwise(&[1, 2, 3], &[4, 5], &[6], 100);
        assert!(!truncated);
        assert_eq!(e.input_ids, vec![1, 2, 3, 4, 5]);
        assert_eq!(e.labels, vec![-100, -100, -100, 4, 5]);
        let r = e.rejected.as_deref().map(|r| (&r.input_ids, &r.labels));
        assert_eq!(r, Some((&vec![1, 2, 3, 6], &vec![-100, -100, -100, 6])));
        // cutoff 6, prompt 6, longer answer 4: 2·4 < 6 fails, 2·6 < 6 fails ⇒ proportional:
        // int(6·4/10) = 2 answer tokens, 4 prompt tokens; the rejected answer is cut to 2 as well.
        let (e, truncated) = pairwise(&[1, 2, 3, 4, 5, 6], &[7, 8, 9, 10], &[11, 12, 13], 6);
        assert!(truncated);
        assert_eq!(e.input_ids, vec![1, 2, 3, 4, 7, 8]);
        let rejected = e.rejected.map(|r| r.input_ids);
        assert_eq!(rejected, Some(vec![1, 2, 3, 4, 11, 12]));
    }

    #[test]
    fn later_turns_are_dropped_once_the_cutoff_is_reached() {
        let opts = EncodeOptions {
            cutoff_len: 3,
            train_on_prompt: false,
            mask_history: false,
        };
        let (e, truncated) = supervised(&pairs(), opts);
        assert_eq!(e.input_ids, vec![1, 2, 3]);
        assert!(truncated);
    }
}
