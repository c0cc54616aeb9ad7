//! LLaMA-Factory's `ComputeSimilarity` (src/llamafactory/train/sft/metric.py): per example,
//! ROUGE-1/2/L f-scores of the jieba-segmented texts and character BLEU-4, each ×100 and rounded
//! to 4 decimals (Python's `round`), then the mean of each over the examples.

use super::bleu::sentence_bleu;
use super::rouge::rouge_f;
use super::segment::{is_py_space, jieba_cut, ChineseText};

/// The four scores of one prediction (×100, rounded as LLaMA-Factory rounds them). ROUGE is
/// `None` when a text holds Chinese, whose jieba segmentation is not implemented.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    pub bleu_4: f64,
    pub rouge: Option<[f64; 3]>,
}

/// The metric names, in `predict_results.json`'s spelling (without the `predict_` prefix).
pub const ROUGE_KEYS: [&str; 3] = ["rouge-1", "rouge-2", "rouge-l"];
pub const BLEU_KEY: &str = "bleu-4";

/// The scores of `pred` against `label`.
pub fn similarity(pred: &str, label: &str) -> Similarity {
    let bleu = sentence_bleu(
        &label.chars().collect::<Vec<_>>(),
        &pred.chars().collect::<Vec<_>>(),
    );
    Similarity {
        bleu_4: round4(bleu * 100.0),
        rouge: rouge_percent(pred, label).ok(),
    }
}

/// ROUGE-1/2/L ×100, rounded; 0 when either text has no word (LLaMA-Factory's rule).
fn rouge_percent(pred: &str, label: &str) -> Result<[f64; 3], ChineseText> {
    let hypothesis = jieba_cut(pred)?.join(" ");
    let reference = jieba_cut(label)?.join(" ");
    let no_words = |s: &str| s.split(is_py_space).all(str::is_empty);
    if no_words(&hypothesis) || no_words(&reference) {
        return Ok([0.0; 3]);
    }
    Ok(rouge_f(&hypothesis, &reference)
        .map(|f| [f.rouge_1, f.rouge_2, f.rouge_l].map(|v| round4(v * 100.0)))
        .unwrap_or([0.0; 3]))
}

/// Python's `round(x, 4)`: the correctly rounded decimal (half to even on exact ties), which
/// Rust's `{:.4}` formatting also produces.
pub fn round4(x: f64) -> f64 {
    format!("{x:.4}").parse().unwrap_or(x)
}

/// The means over the examples: `bleu-4` always, the ROUGE keys when every example has them
/// (`None` for ROUGE otherwise), or `None` altogether without an example.
pub fn mean_scores(scores: &[Similarity]) -> Option<(f64, Option<[f64; 3]>)> {
    if scores.is_empty() {
        return None;
    }
    let n = scores.len() as f64;
    let bleu = scores.iter().map(|s| s.bleu_4).sum::<f64>() / n;
    let rouge: Option<Vec<[f64; 3]>> = scores.iter().map(|s| s.rouge).collect();
    let rouge = rouge.map(|all| {
        let mut sum = [0.0; 3];
        for r in &all {
            for (acc, v) in sum.iter_mut().zip(r) {
                *acc += v;
            }
        }
        sum.map(|s| s / n)
    });
    Some((bleu, rouge))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round4_is_pythons_round() {
        // Exact binary ties round to even; non-ties by their exact value.
        assert_eq!(round4(0.00005), 0.0001);
        assert_eq!(round4(12.34565), 12.3456);
        assert_eq!(round4(1.000_050_000_1), 1.0001);
        assert_eq!(round4(2.0), 2.0);
    }

    #[test]
    fn empty_prediction_scores_zero() {
        let s = similarity("", "the answer");
        assert_eq!(s.bleu_4, 0.0);
        assert_eq!(s.rouge, Some([0.0; 3]));
        let blank = similarity(" \n", "the answer");
        assert_eq!(blank.rouge, Some([0.0; 3]));
    }

    #[test]
    fn exact_answer_scores_one_hundred() {
        let s = similarity("the answer is 42", "the answer is 42");
        assert_eq!(s.bleu_4, 100.0);
        assert_eq!(s.rouge, Some([100.0; 3]));
    }

    #[test]
    fn chinese_keeps_bleu_and_drops_rouge() {
        let s = similarity("今天天气很好", "今天天气不错");
        assert!(s.bleu_4 > 0.0);
        assert_eq!(s.rouge, None);
        let mean = mean_scores(&[s, similarity("a", "a")]).unwrap();
        assert_eq!(mean.1, None);
    }

    #[test]
    fn means_average_each_metric() {
        let a = Similarity {
            bleu_4: 10.0,
            rouge: Some([1.0, 2.0, 3.0]),
        };
        let b = Similarity {
            bleu_4: 20.0,
            rouge: Some([3.0, 4.0, 5.0]),
        };
        assert_eq!(mean_scores(&[a, b]), Some((15.0, Some([2.0, 3.0, 4.0]))));
        assert_eq!(mean_scores(&[]), None);
    }
}
