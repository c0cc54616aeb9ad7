//! `lf-data`: datasets, chat templates and tokenisation for `lf-trainer`, in pure Rust (no
//! libtorch).
//!
//! Flow: [`load_tokenizer`] reads a model directory's tokenizer and chat template;
//! [`prepare`] resolves `dataset` names (`dataset_info.json` or files in `dataset_dir`), reads
//! alpaca / sharegpt / OpenAI-style records from JSON or JSON Lines, renders them with a
//! [`ChatTemplate`], masks and truncates them as LLaMA-Factory does, splits off a validation set,
//! packs if asked, and caches the result keyed by a hash of everything that shaped it. Training
//! then draws its steps in a deterministic, resumable, rank-sharded order ([`StepPlan`]) and pads
//! each micro-batch with [`collate`].

pub mod batch;
pub mod cache;
pub mod convert;
pub mod encode;
pub mod error;
pub mod files;
pub mod key;
pub mod kto;
pub mod load;
pub mod neat_pack;
pub mod pack;
pub mod prepare;
pub mod reader;
pub mod sampler;
pub mod source;
pub mod stats;
pub mod template;
pub mod tokenizer;

pub use batch::{collate, collate_pairs, Batch};
pub use convert::{Conversation, Preference, Sample};
pub use encode::{infer_seqlen, pairwise, EncodeOptions, Example, IGNORE_INDEX};
pub use error::DataError;
pub use neat_pack::collate_packed;
pub use prepare::{prepare, spawn_prepare, DataContext, PreparedData};
pub use sampler::{eval_rounds, permutation, DataPosition, StepPlan};
pub use stats::DataStats;
pub use template::ChatTemplate;
pub use tokenizer::{load_tokenizer, TokenizerBundle};
