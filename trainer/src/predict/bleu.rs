//! `nltk.translate.bleu_score.sentence_bleu([reference], hypothesis,
//! smoothing_function=SmoothingFunction().method3)` (uniform 4-gram weights), on characters as
//! LLaMA-Factory calls it: clipped n-gram precisions, NIST geometric smoothing (a precision with
//! no match becomes `1 / (2^k · count)`, k = 1, 2, … in order), the brevity penalty, and the
//! weighted log-precisions summed exactly (`math.fsum`).

use std::collections::HashMap;

/// BLEU-4 of `hypothesis` against one `reference` (0 when no unigram matches).
pub fn sentence_bleu(reference: &[char], hypothesis: &[char]) -> f64 {
    let mut precisions = [0.0f64; 4];
    let mut smoothing = 1u32;
    for (i, p) in precisions.iter_mut().enumerate() {
        let (matches, count) = modified_precision(reference, hypothesis, i + 1);
        if i == 0 && matches == 0 {
            return 0.0;
        }
        *p = if matches == 0 {
            let v = 1.0 / (2f64.powi(smoothing as i32) * count as f64);
            smoothing += 1;
            v
        } else {
            matches as f64 / count as f64
        };
    }
    let terms: Vec<f64> = precisions.iter().map(|p| 0.25 * p.ln()).collect();
    brevity_penalty(reference.len(), hypothesis.len()) * fsum(&terms).exp()
}

/// (clipped n-gram matches, n-grams of the hypothesis or 1 when it has none).
fn modified_precision(reference: &[char], hypothesis: &[char], n: usize) -> (usize, usize) {
    let hyp = ngram_counts(hypothesis, n);
    let reference = ngram_counts(reference, n);
    let matches = hyp
        .iter()
        .map(|(g, c)| (*c).min(reference.get(g).copied().unwrap_or(0)))
        .sum();
    let total: usize = hyp.values().sum();
    (matches, total.max(1))
}

fn ngram_counts(s: &[char], n: usize) -> HashMap<&[char], usize> {
    let mut m: HashMap<&[char], usize> = HashMap::new();
    for g in s.windows(n) {
        *m.entry(g).or_default() += 1;
    }
    m
}

fn brevity_penalty(reference_len: usize, hypothesis_len: usize) -> f64 {
    if hypothesis_len > reference_len {
        1.0
    } else if hypothesis_len == 0 {
        0.0
    } else {
        (1.0 - reference_len as f64 / hypothesis_len as f64).exp()
    }
}

/// Python's `math.fsum`: the correctly rounded sum (Shewchuk's exact partials).
fn fsum(values: &[f64]) -> f64 {
    let mut partials: Vec<f64> = Vec::new();
    for &v in values {
        let mut x = v;
        let mut kept = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        partials.truncate(kept);
        partials.push(x);
    }
    // Add the partials from the top, rounding half-way cases as the exact sum says.
    let Some(mut hi) = partials.pop() else {
        return 0.0;
    };
    let mut lo = 0.0;
    while let Some(y) = partials.pop() {
        let x = hi;
        hi = x + y;
        let yr = hi - x;
        lo = y - yr;
        if lo != 0.0 {
            break;
        }
    }
    if let Some(&next) = partials.last() {
        if (lo < 0.0 && next < 0.0) || (lo > 0.0 && next > 0.0) {
            let y = lo * 2.0;
            let x = hi + y;
            if y == x - hi {
                hi = x;
            }
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> Vec<char> {
        s.chars().collect()
    }

    #[test]
    fn identical_long_texts_score_one() {
        let s = chars("the same sentence");
        assert!((sentence_bleu(&s, &s) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn no_common_character_or_empty_hypothesis_scores_zero() {
        assert_eq!(sentence_bleu(&chars("abc"), &chars("xyz")), 0.0);
        assert_eq!(sentence_bleu(&chars("abc"), &[]), 0.0);
        assert_eq!(sentence_bleu(&[], &chars("abc")), 0.0);
    }

    #[test]
    fn missing_higher_orders_are_smoothed_geometrically() {
        // "ab" vs "ab": p1 = 2/2, p2 = 1/1, no 3- or 4-grams (count 1): 1/2 and 1/4.
        let want = (0.25 * (0.5f64).ln() + 0.25 * (0.25f64).ln()).exp();
        let got = sentence_bleu(&chars("ab"), &chars("ab"));
        assert!((got - want).abs() < 1e-15, "{got} {want}");
    }

    #[test]
    fn short_hypotheses_pay_the_brevity_penalty() {
        let full = sentence_bleu(&chars("abcdef"), &chars("abcdef"));
        let short = sentence_bleu(&chars("abcdef"), &chars("abcde"));
        assert!(short < full * (1.0f64 - 6.0 / 5.0).exp() + 1e-12);
    }

    #[test]
    fn fsum_is_exact() {
        assert_eq!(fsum(&[1e100, 1.0, -1e100, 1e-100]), 1.0);
        assert_eq!(fsum(&[0.1; 10]), 1.0);
        assert_eq!(fsum(&[]), 0.0);
    }
}
