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
    let bleu: Vec<f64> = scores.iter().map(|s| s.bleu_4).collect();
    let rouge: Option<Vec<[f64; 3]>> = scores.iter().map(|s| s.rouge).collect();
    let rouge =
        rouge.map(|all| [0, 1, 2].map(|k| np_mean(&all.iter().map(|r| r[k]).collect::<Vec<_>>())));
    Some((np_mean(&bleu), rouge))
}

/// `float(np.mean(values))` to the last bit: NumPy's pairwise sum (8 accumulators over blocks of
/// at most 128, halves above that) from 0, divided by the count.
pub fn np_mean(values: &[f64]) -> f64 {
    (0.0 + pairwise_sum(values)) / values.len() as f64
}

fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        return a.iter().fold(0.0, |acc, v| acc + v);
    }
    if n <= 128 {
        let mut r = [0.0; 8];
        r.copy_from_slice(&a[..8]);
        let whole = n - n % 8;
        for block in a[8..whole].chunks_exact(8) {
            for (acc, v) in r.iter_mut().zip(block) {
                *acc += v;
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for v in &a[whole..] {
            res += v;
        }
        return res;
    }
    let half = n / 2 - (n / 2) % 8;
    pairwise_sum(&a[..half]) + pairwise_sum(&a[half..])
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
    fn the_mean_is_numpys_to_the_last_bit() {
        // 24 BLEU-4 values of a quick-start prediction run: np.mean gives 66.6369375, a plain
        // left-to-right sum 66.63693749999999.
        let v = [
            4.4569, 9.6524, 100.0, 100.0, 100.0, 84.0896, 16.3723, 10.6822, 100.0, 100.0, 9.6524,
            100.0, 100.0, 100.0, 21.0224, 100.0, 23.6435, 100.0, 11.5981, 100.0, 100.0, 100.0,
            100.0, 8.1167,
        ];
        assert_eq!(np_mean(&v), 66.6369375);
        assert_ne!(v.iter().sum::<f64>() / 24.0, 66.6369375);
        assert_eq!(np_mean(&[1.0, 2.0]), 1.5);
        let long: Vec<f64> = (0..300).map(|i| i as f64 * 0.1).collect();
        assert_eq!(np_mean(&long), 14.95);
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
