//! Batch prediction (`do_predict` with `predict_with_generate`), as LLaMA-Factory's SFT workflow
//! does it: generate an answer for every evaluation example, write `generated_predictions.jsonl`
//! and score the answers against the labels with LLaMA-Factory's `ComputeSimilarity`
//! (BLEU-4 on characters, ROUGE-1/2/L on jieba words) into `predict_results.json`.
//!
//! * [`run`]: the examples, the generation, the files.
//! * [`similarity`]: the per-example scores and their means; [`bleu`] (nltk's `sentence_bleu`
//!   with smoothing method 3), [`rouge`] (rouge-chinese), [`segment`] (`jieba.cut` for text
//!   without Chinese characters).
//! * [`output`]: the two files, byte for byte as LLaMA-Factory writes them.

pub mod bleu;
pub mod output;
pub mod rouge;
pub mod run;
pub mod segment;
pub mod similarity;

pub use run::{predict_without_training, run_predict, trained_model_config};
