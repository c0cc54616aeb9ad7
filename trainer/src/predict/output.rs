//! What prediction writes to `output_dir`, byte for byte as LLaMA-Factory writes it:
//! `generated_predictions.jsonl` (one `{"prompt": …, "predict": …, "label": …}` per example,
//! Python's `json.dumps(..., ensure_ascii=False)`), and `predict_results.json` (Hugging Face's
//! `save_metrics("predict", …)`: sorted keys, 4-space indent, also merged into
//! `all_results.json`). Both are replaced atomically and durably, like every output.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::adapters::model_error;
use crate::error::TrainerError;
use crate::outputs::merge_results;

pub const PREDICTIONS: &str = "generated_predictions.jsonl";
pub const PREDICT_RESULTS: &str = "predict_results.json";

/// One answered example: the prompt decoded with its special tokens, the generated answer and
/// the reference answer decoded without them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Prediction {
    pub prompt: String,
    pub predict: String,
    pub label: String,
}

impl Prediction {
    /// `json.dumps({"prompt": …, "predict": …, "label": …}, ensure_ascii=False)`.
    pub fn to_json_line(&self) -> Result<String, serde_json::Error> {
        Ok(format!(
            "{{\"prompt\": {}, \"predict\": {}, \"label\": {}}}",
            serde_json::to_string(&self.prompt)?,
            serde_json::to_string(&self.predict)?,
            serde_json::to_string(&self.label)?
        ))
    }
}

/// Writes `generated_predictions.jsonl`.
pub fn write_predictions(dir: &Path, predictions: &[Prediction]) -> Result<PathBuf, TrainerError> {
    let path = dir.join(PREDICTIONS);
    let mut text = String::new();
    for p in predictions {
        let line = p
            .to_json_line()
            .map_err(|e| TrainerError::runtime(format!("encoding a prediction: {e}")))?;
        text.push_str(&line);
        text.push('\n');
    }
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// Reads `generated_predictions.jsonl` back.
pub fn read_predictions(dir: &Path) -> Result<Vec<Prediction>, TrainerError> {
    let path = dir.join(PREDICTIONS);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainerError::io("read", &path, e))?;
    text.lines()
        .map(|l| {
            serde_json::from_str(l).map_err(|e| {
                TrainerError::runtime(format!(
                    "{}: a line is not a prediction: {e}",
                    path.display()
                ))
            })
        })
        .collect()
}

/// Writes `predict_results.json` (sorted keys, 4-space indent) and merges it into
/// `all_results.json`.
pub fn write_results(dir: &Path, metrics: &Map<String, Value>) -> Result<PathBuf, TrainerError> {
    let path = dir.join(PREDICT_RESULTS);
    let sorted: std::collections::BTreeMap<&String, &Value> = metrics.iter().collect();
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(&sorted, &mut ser)
        .map_err(|e| TrainerError::runtime(format!("encoding {PREDICT_RESULTS}: {e}")))?;
    write_atomic(&path, &buf)?;
    merge_results(dir, metrics.clone())?;
    Ok(path)
}

/// A crash leaves the old file or the new one; a full volume is [`TrainerError::VolumeFull`].
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainerError> {
    lf_model::durable::write_atomic(path, bytes).map_err(|e| model_error("writing predictions", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_pythons_json_dumps() {
        let p = Prediction {
            prompt: "<s>Q: \"hi\"\n".into(),
            predict: "é\t".into(),
            label: String::new(),
        };
        assert_eq!(
            p.to_json_line().unwrap(),
            r#"{"prompt": "<s>Q: \"hi\"\n", "predict": "é\t", "label": ""}"#
        );
    }

    #[test]
    fn predictions_and_results_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ps = vec![
            Prediction {
                prompt: "a".into(),
                predict: "b".into(),
                label: "c".into(),
            };
            2
        ];
        write_predictions(dir.path(), &ps).unwrap();
        assert_eq!(read_predictions(dir.path()).unwrap(), ps);
        let mut m = Map::new();
        m.insert("predict_rouge-1".into(), 50.0.into());
        m.insert("predict_bleu-4".into(), 12.5.into());
        write_results(dir.path(), &m).unwrap();
        let text = std::fs::read_to_string(dir.path().join(PREDICT_RESULTS)).unwrap();
        assert_eq!(
            text,
            "{\n    \"predict_bleu-4\": 12.5,\n    \"predict_rouge-1\": 50.0\n}"
        );
        let all = std::fs::read_to_string(dir.path().join("all_results.json")).unwrap();
        assert!(all.contains("predict_bleu-4"), "{all}");
    }
}
