//! `rouge_chinese.Rouge().get_scores(hyp, ref)[0]` (rouge-chinese 1.0.3): ROUGE-1, ROUGE-2 and
//! ROUGE-L f-scores of two space-joined token strings, as LLaMA-Factory calls it.
//!
//! The text is cut into sentences after `。！？?` (and `......`, `……`, closing quotes), each
//! sentence's whitespace runs become single spaces, and the words are the sentences split on
//! `" "`. ROUGE-N counts distinct n-grams (sets); ROUGE-L is the longest common subsequence of
//! the whole word lists. Every f-score is `2·p·r / (p + r + 1e-8)`.

use std::collections::HashSet;

use super::segment::is_py_space;

/// The three f-scores of one hypothesis against one reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RougeF {
    pub rouge_1: f64,
    pub rouge_2: f64,
    pub rouge_l: f64,
}

/// `Rouge().get_scores(hyp, ref)[0]`'s f-scores. Like rouge-chinese, it needs a word in each
/// text (LLaMA-Factory scores an empty one 0 before calling it): `None` without.
pub fn rouge_f(hyp: &str, reference: &str) -> Option<RougeF> {
    let hyp = words(&sentences(hyp));
    let reference = words(&sentences(reference));
    if hyp.is_empty() || reference.is_empty() {
        return None;
    }
    Some(RougeF {
        rouge_1: rouge_n(&hyp, &reference, 1),
        rouge_2: rouge_n(&hyp, &reference, 2),
        rouge_l: rouge_l(&hyp, &reference),
    })
}

fn f_score(p: f64, r: f64) -> f64 {
    2.0 * ((p * r) / (p + r + 1e-8))
}

fn ratio(overlap: usize, count: usize) -> f64 {
    if count == 0 {
        0.0
    } else {
        overlap as f64 / count as f64
    }
}

fn rouge_n(hyp: &[String], reference: &[String], n: usize) -> f64 {
    let grams =
        |w: &[String]| -> HashSet<Vec<String>> { w.windows(n).map(|g| g.to_vec()).collect() };
    let (h, r) = (grams(hyp), grams(reference));
    let overlap = h.intersection(&r).count();
    f_score(ratio(overlap, h.len()), ratio(overlap, r.len()))
}

fn rouge_l(hyp: &[String], reference: &[String]) -> f64 {
    let lcs = lcs_len(reference, hyp);
    f_score(
        lcs as f64 / hyp.len() as f64,
        lcs as f64 / reference.len() as f64,
    )
}

fn lcs_len(x: &[String], y: &[String]) -> usize {
    let mut prev = vec![0usize; y.len() + 1];
    for a in x {
        let mut row = vec![0usize; y.len() + 1];
        for (j, b) in y.iter().enumerate() {
            row[j + 1] = if a == b {
                prev[j] + 1
            } else {
                prev[j + 1].max(row[j])
            };
        }
        prev = row;
    }
    prev[y.len()]
}

/// `[" ".join(s.split()) for s in Rouge.cut_sent(text) if len(s) > 0]`.
fn sentences(text: &str) -> Vec<String> {
    let enders = |c: char| "。！？?".contains(c);
    let quotes = |c: char| "”’".contains(c);
    let mut t: Vec<char> = text.chars().collect();
    // re.sub('([。！？\?])([^”’])', r"\1\n\2")
    t = break_after(&t, 1, |w| enders(w[0]), |c| !quotes(c));
    // re.sub('(\.{6})([^”’])', ...) and re.sub('(\…{2})([^”’])', ...)
    t = break_after(&t, 6, |w| w.iter().all(|&c| c == '.'), |c| !quotes(c));
    t = break_after(&t, 2, |w| w.iter().all(|&c| c == '…'), |c| !quotes(c));
    // re.sub('([。！？\?][”’])([^，。！？\?])', ...)
    t = break_after(
        &t,
        2,
        |w| enders(w[0]) && quotes(w[1]),
        |c| !"，。！？?".contains(c),
    );
    let text: String = t.into_iter().collect();
    text.trim_end_matches(is_py_space)
        .split('\n')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.split(is_py_space)
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// `re.sub('(HEAD)(NEXT)', r'\1\n\2', text)` where HEAD is `width` characters matching `head`
/// and NEXT one character matching `next`; matches do not overlap, left to right.
fn break_after(
    t: &[char],
    width: usize,
    head: impl Fn(&[char]) -> bool,
    next: impl Fn(char) -> bool,
) -> Vec<char> {
    let mut out = Vec::with_capacity(t.len());
    let mut i = 0;
    while i < t.len() {
        if i + width < t.len() && head(&t[i..i + width]) && next(t[i + width]) {
            out.extend_from_slice(&t[i..i + width]);
            out.push('\n');
            out.push(t[i + width]);
            i += width + 1;
        } else {
            out.push(t[i]);
            i += 1;
        }
    }
    out
}

/// `itertools.chain(*[s.split(" ") for s in sentences])`.
fn words(sentences: &[String]) -> Vec<String> {
    sentences
        .iter()
        .flat_map(|s| s.split(' ').map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_texts_score_one() {
        let s = rouge_f("the cat sat", "the cat sat").unwrap();
        for f in [s.rouge_1, s.rouge_2, s.rouge_l] {
            assert!((f - 1.0).abs() < 1e-7, "{s:?}");
        }
    }

    #[test]
    fn unigram_sets_bigrams_and_lcs() {
        // hyp {a, b, c}, ref {a, c, d}: p = r = 2/3; bigrams share none; LCS "a c" = 2.
        let s = rouge_f("a b c", "a c d").unwrap();
        let two_thirds = f_score(2.0 / 3.0, 2.0 / 3.0);
        assert_eq!(s.rouge_1, two_thirds);
        assert_eq!(s.rouge_2, 0.0);
        assert_eq!(s.rouge_l, two_thirds);
        // Repeats count once in ROUGE-N but every time in the LCS.
        let r = rouge_f("a a a", "a").unwrap();
        assert_eq!(r.rouge_1, f_score(1.0, 1.0));
        assert_eq!(r.rouge_l, f_score(1.0 / 3.0, 1.0));
    }

    #[test]
    fn sentences_break_after_question_marks_and_drop_blank_lines() {
        assert_eq!(sentences("a ? b"), ["a ?", "b"]);
        assert_eq!(sentences("a\n\nb  c "), ["a", "b c"]);
        assert_eq!(sentences("x\n \ny"), ["x", "", "y"]);
        assert_eq!(sentences(".......z"), ["......", ".z"]);
    }

    #[test]
    fn a_text_without_words_has_no_score() {
        assert_eq!(rouge_f("  ", "a"), None);
        assert_eq!(rouge_f("a", ""), None);
    }
}
