//! `do_predict`: answers every evaluation example with the generating arguments (lf-model's one
//! sampler, as `chat` uses it), scores the answers as LLaMA-Factory does and writes its files.
//!
//! The examples are the tokenised evaluation split (`eval_dataset`, or the `val_size` share of
//! `dataset`; the whole `dataset` when neither is set), encoded without `train_on_prompt` so the
//! answer is where the labels start: the prompt is everything before the last answer, as
//! LLaMA-Factory's unsupervised encoding for `predict_with_generate` builds it.

use std::path::Path;
use std::time::Instant;

use lf_api::training::{FinetuningType, TrainingConfig};
use lf_data::{Example, TokenizerBundle, IGNORE_INDEX};
use lf_model::{CausalLm, GenerationParams};
use serde_json::{Map, Value};

use super::output::{write_predictions, write_results, Prediction};
use super::similarity::{mean_scores, similarity, BLEU_KEY, ROUGE_KEYS};
use crate::adapters::model_error;
use crate::error::TrainerError;
use crate::setup;

/// The config that predicts with what training wrote to `out`: its adapter on the base model
/// for LoRA, the saved model otherwise.
pub fn trained_model_config(cfg: &TrainingConfig, out: &Path) -> TrainingConfig {
    let mut c = cfg.clone();
    let out = out.display().to_string();
    if cfg.finetuning_type == FinetuningType::Lora {
        c.adapter_name_or_path = Some(out);
    } else {
        c.model_name_or_path = Some(out);
        c.adapter_name_or_path = None;
    }
    c
}

/// Predicts with `cfg`'s model (and adapter), writes `generated_predictions.jsonl` and
/// `predict_results.json` to `out`, and returns the metrics.
pub fn run_predict(cfg: &TrainingConfig, out: &Path) -> Result<Map<String, Value>, TrainerError> {
    let model_dir = setup::model_dir(cfg)?;
    let device = setup::device();
    let tok = setup::tokenizer(&model_dir)?;
    let examples = predict_examples(cfg, &tok, out)?;
    let (_, stop) = setup::template_and_stops(cfg, &tok)?;
    let lm = setup::model(cfg, &model_dir, device, false, None)?;
    let params = GenerationParams::from_config(cfg);
    tracing::info!(
        examples = examples.len(),
        max_new_tokens = params.max_new_tokens,
        do_sample = params.do_sample,
        "predicting"
    );
    let started = Instant::now();
    let predictions = generate_all(&lm, &tok, &examples, &params, &stop)?;
    let runtime = started.elapsed().as_secs_f64();
    let path = write_predictions(out, &predictions)?;
    tracing::info!("wrote {}", path.display());
    let mut metrics = score(&predictions);
    metrics.extend(speed_metrics(
        runtime,
        predictions.len(),
        cfg.per_device_eval_batch_size,
    ));
    let path = write_results(out, &metrics)?;
    let shown = Value::Object(metrics.clone());
    tracing::info!(metrics = %shown, "wrote {}", path.display());
    Ok(metrics)
}

/// `lf-trainer train` when nothing trains (`do_train: false`, or a prediction config without a
/// `dataset`): rank 0 predicts with the configured model and adapter, as LLaMA-Factory does
/// with `do_predict` alone; any other local rank has nothing to do.
pub fn predict_without_training(cfg: &TrainingConfig) -> Result<(), TrainerError> {
    if !cfg.do_predict {
        return Err(TrainerError::config(
            "do_train is false and do_predict is not set: nothing to do (`lf-trainer eval` reports the eval loss)",
        ));
    }
    let rank: usize = std::env::var(lf_api::runtime::env::RANK)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    if rank != 0 {
        return Ok(());
    }
    let out = setup::output_dir(cfg)?;
    run_predict(cfg, &out).map(drop)
}

/// The tokenised examples to answer.
fn predict_examples(
    cfg: &TrainingConfig,
    tok: &TokenizerBundle,
    out: &Path,
) -> Result<Vec<Example>, TrainerError> {
    let mut data_cfg = cfg.clone();
    data_cfg.train_on_prompt = false;
    data_cfg.do_train = false;
    let (train, eval) = setup::data(&data_cfg, tok, out, 0, 1)?;
    if !eval.is_empty() {
        Ok(eval)
    } else if cfg.eval_dataset.is_none() && cfg.val_size == 0.0 {
        Ok(train)
    } else {
        Err(TrainerError::config(
            "do_predict: the evaluation split is empty: set eval_dataset or a larger val_size",
        ))
    }
}

/// The prompt (every token before the last answer) and that answer, or `None` for an example
/// without one.
pub fn prompt_and_answer(ex: &Example) -> Option<(&[u32], &[u32])> {
    let end = ex.labels.iter().rposition(|l| *l != IGNORE_INDEX)? + 1;
    let start = ex.labels[..end]
        .iter()
        .rposition(|l| *l == IGNORE_INDEX)
        .map_or(0, |i| i + 1);
    (start > 0).then(|| (&ex.input_ids[..start], &ex.input_ids[start..end]))
}

/// How often progress is logged, in examples.
const LOG_EVERY: usize = 50;

fn generate_all(
    lm: &CausalLm,
    tok: &TokenizerBundle,
    examples: &[Example],
    params: &GenerationParams,
    stop: &[i64],
) -> Result<Vec<Prediction>, TrainerError> {
    let mut out = Vec::with_capacity(examples.len());
    for (i, ex) in examples.iter().enumerate() {
        let Some((prompt, answer)) = prompt_and_answer(ex) else {
            continue;
        };
        let ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
        let generated = lm
            .generate(&ids, params, stop, |_| {})
            .map_err(|e| model_error("generation", e))?;
        let generated: Vec<u32> = generated
            .into_iter()
            .filter_map(|t| u32::try_from(t).ok())
            .collect();
        let decode = |ids: &[u32], skip| tok.decode(ids, skip).map_err(setup::data_error);
        out.push(Prediction {
            prompt: decode(prompt, false)?,
            predict: decode(&generated, true)?,
            label: decode(answer, true)?,
        });
        if (i + 1) % LOG_EVERY == 0 {
            tracing::info!("predicted {} of {} examples", i + 1, examples.len());
        }
    }
    Ok(out)
}

/// `predict_bleu-4` and, unless an example holds Chinese, `predict_rouge-1/2/l`.
pub fn score(predictions: &[Prediction]) -> Map<String, Value> {
    let scores: Vec<_> = predictions
        .iter()
        .map(|p| similarity(&p.predict, &p.label))
        .collect();
    let mut m = Map::new();
    let Some((bleu, rouge)) = mean_scores(&scores) else {
        return m;
    };
    m.insert(format!("predict_{BLEU_KEY}"), bleu.into());
    match rouge {
        Some(r) => {
            for (k, v) in ROUGE_KEYS.iter().zip(r) {
                m.insert(format!("predict_{k}"), v.into());
            }
        }
        None => tracing::warn!(
            "no ROUGE: the predictions or labels hold Chinese text, whose jieba segmentation (which LLaMA-Factory's ROUGE uses) lf-trainer does not implement; BLEU-4 (on characters) is written"
        ),
    }
    m
}

/// Hugging Face's `speed_metrics("predict", …)`: runtime (rounded to 4 decimals), samples and
/// steps (of `per_device_eval_batch_size`) per second (3 decimals).
pub fn speed_metrics(runtime: f64, samples: usize, batch: usize) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("predict_runtime".into(), round_to(runtime, 4).into());
    if runtime > 0.0 {
        let steps = samples.div_ceil(batch.max(1));
        m.insert(
            "predict_samples_per_second".into(),
            round_to(samples as f64 / runtime, 3).into(),
        );
        m.insert(
            "predict_steps_per_second".into(),
            round_to(steps as f64 / runtime, 3).into(),
        );
    }
    m
}

fn round_to(x: f64, digits: usize) -> f64 {
    format!("{x:.digits$}").parse().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_ends_where_the_last_answer_starts() {
        let ex = Example {
            input_ids: vec![1, 2, 3, 4, 5, 6, 7],
            labels: vec![-100, -100, 3, -100, -100, 6, 7],
            rejected: None,
            kto_tag: None,
        };
        let (p, a) = prompt_and_answer(&ex).unwrap();
        assert_eq!(p, [1, 2, 3, 4, 5]);
        assert_eq!(a, [6, 7]);
        let none = Example {
            input_ids: vec![1, 2],
            labels: vec![-100, -100],
            rejected: None,
            kto_tag: None,
        };
        assert!(prompt_and_answer(&none).is_none());
        let all = Example {
            input_ids: vec![1, 2],
            labels: vec![1, 2],
            rejected: None,
            kto_tag: None,
        };
        assert!(prompt_and_answer(&all).is_none());
    }

    #[test]
    fn speed_metrics_round_as_transformers_does() {
        let m = speed_metrics(2.000_04, 5, 2);
        assert_eq!(m["predict_runtime"], 2.0);
        assert_eq!(m["predict_samples_per_second"], 2.5);
        assert_eq!(m["predict_steps_per_second"], 1.5);
    }

    #[test]
    fn lora_predicts_with_the_saved_adapter_and_full_with_the_saved_model() {
        let mut cfg = TrainingConfig {
            model_name_or_path: Some("base".into()),
            ..TrainingConfig::default()
        };
        let out = Path::new("out");
        let lora = trained_model_config(&cfg, out);
        assert_eq!(lora.model_name_or_path.as_deref(), Some("base"));
        assert_eq!(lora.adapter_name_or_path.as_deref(), Some("out"));
        cfg.finetuning_type = FinetuningType::Full;
        let full = trained_model_config(&cfg, out);
        assert_eq!(full.model_name_or_path.as_deref(), Some("out"));
        assert_eq!(full.adapter_name_or_path, None);
    }
}
