//! BLEU-4 and ROUGE-1/2/L of `lf_trainer::predict` against LLaMA-Factory's `ComputeSimilarity`
//! run on the PyPI packages it uses (jieba, nltk, rouge-chinese: `tests/reference/
//! predict_similarity.py`), on fixed prediction/label pairs: jieba's tokens must be equal, every
//! per-example score and every mean equal to 1e-6. Chinese text has no ROUGE here (refused):
//! its BLEU must still agree.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lf_trainer::predict::segment::jieba_cut;
use lf_trainer::predict::similarity::{mean_scores, similarity, BLEU_KEY, ROUGE_KEYS};
use serde_json::Value;

/// (prediction, label): English, punctuation, empty texts, repeats, numbers, symbols, other
/// scripts and Chinese.
const PAIRS: &[(&str, &str)] = &[
    (
        "The capital of France is Paris.",
        "Paris is the capital of France.",
    ),
    ("cold", "cold"),
    ("", "hot"),
    ("hot", ""),
    ("", ""),
    ("yes yes yes yes", "yes"),
    ("the the the the the the the", "the cat is on the mat"),
    ("It costs $3.50, or 3.5%.", "It costs 3.50 dollars (3.5%)."),
    (
        "Version 1.2.3 fixes C++ and AT&T bugs!",
        "version 1.2.3 fixed the c++ bug",
    ),
    (
        "Is it raining? No. It is sunny?!",
        "Is it raining? Yes... it is!",
    ),
    (
        "state-of-the-art models_v2 work",
        "state of the art models work",
    ),
    (
        "Line one\nLine two\r\nLine  three",
        "Line one\n\nLine three",
    ),
    ("   ", "blank prediction"),
    (
        "\u{201c}Quoted?\u{201d} she asked. \u{2018}Yes!\u{2019}",
        "\u{201c}Quoted?\u{201d} he asked.",
    ),
    ("Wait...... what\u{2026}\u{2026}then?", "Wait...... what?"),
    ("1 2 3 4 5 6 7 8 9 10", "1 2 3 4 5 6 7 8 9 10 11"),
    ("caf\u{e9} na\u{ef}ve r\u{e9}sum\u{e9}", "cafe naive resume"),
    ("small", "big"),
    ("The answer is 42", "The answer is 42."),
    ("a", "a"),
    ("foo\tbar x\n \ny", "foo bar x y"),
    (
        "\u{4eca}\u{5929}\u{5929}\u{6c14}\u{5f88}\u{597d}",
        "\u{4eca}\u{5929}\u{5929}\u{6c14}\u{4e0d}\u{9519}",
    ),
    ("\u{6211}\u{7231}Python", "\u{6211}\u{559c}\u{6b22}Python"),
];

fn python() -> PathBuf {
    let p = std::env::var_os("LF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    assert!(
        p.exists(),
        "the Python reference stack is missing: {} does not exist (run scripts/install-python-ref.sh or set LF_PYTHON)",
        p.display()
    );
    p
}

fn reference() -> Value {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/predict_similarity.py");
    let mut child = Command::new(python())
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    let input = serde_json::to_string(&PAIRS).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "predict_similarity.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn has_chinese(s: &str) -> bool {
    s.chars().any(lf_trainer::predict::segment::is_han)
}

fn close(a: f64, b: &Value, what: &str) {
    let b = b
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {b} is not a number"));
    assert!(
        (a - b).abs() <= 1e-6,
        "{what}: lf-trainer {a}, LLaMA-Factory {b}"
    );
}

#[test]
fn bleu_and_rouge_equal_llama_factorys() {
    let reference = reference();
    let rows = reference["pairs"].as_array().unwrap();
    assert_eq!(rows.len(), PAIRS.len());
    let mut english = Vec::new();
    let mut all = Vec::new();
    for ((pred, label), row) in PAIRS.iter().zip(rows) {
        let ours = similarity(pred, label);
        all.push(ours);
        close(
            ours.bleu_4,
            &row[BLEU_KEY],
            &format!("bleu-4 of {pred:?}/{label:?}"),
        );
        if has_chinese(pred) || has_chinese(label) {
            assert_eq!(ours.rouge, None, "{pred:?}: Chinese ROUGE is refused");
            continue;
        }
        english.push(ours);
        for (text, key) in [(pred, "hyp_tokens"), (label, "ref_tokens")] {
            let theirs: Vec<String> = serde_json::from_value(row[key].clone()).unwrap();
            assert_eq!(jieba_cut(text).unwrap(), theirs, "jieba.cut({text:?})");
        }
        let rouge = ours.rouge.expect("ROUGE without Chinese");
        for (v, k) in rouge.iter().zip(ROUGE_KEYS) {
            close(*v, &row[k], &format!("{k} of {pred:?}/{label:?}"));
        }
    }
    // The means over every pair: BLEU always, ROUGE only where no text is Chinese.
    let (bleu, rouge) = mean_scores(&all).unwrap();
    close(bleu, &reference["means"][BLEU_KEY], "mean bleu-4");
    // The mean is NumPy's to the last bit (pairwise summation), not only to 1e-6.
    assert_eq!(Some(bleu), reference["means"][BLEU_KEY].as_f64());
    assert_eq!(rouge, None);
    let (_, rouge) = mean_scores(&english).unwrap();
    let rows_en: Vec<&Value> = PAIRS
        .iter()
        .zip(rows)
        .filter(|((p, l), _)| !has_chinese(p) && !has_chinese(l))
        .map(|(_, r)| r)
        .collect();
    for (i, k) in ROUGE_KEYS.iter().enumerate() {
        let mean: f64 =
            rows_en.iter().map(|r| r[*k].as_f64().unwrap()).sum::<f64>() / rows_en.len() as f64;
        close(rouge.unwrap()[i], &Value::from(mean), &format!("mean {k}"));
    }
    // Not vacuous: the pairs span the range.
    assert!(all.iter().any(|s| s.bleu_4 == 100.0) && all.iter().any(|s| s.bleu_4 == 0.0));
}
