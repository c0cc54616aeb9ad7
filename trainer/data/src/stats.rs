//! What preparing the data did, for logs and `all_results.json`.

use serde::{Deserialize, Serialize};

/// Counts from reading, tokenising and splitting. Stored in the cache, so a cache hit reports the
/// numbers of the run that tokenised (with `cache_hit` set).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataStats {
    /// Records read from the training datasets (after `max_samples` / `num_samples`).
    pub records: usize,
    /// Records read from `eval_dataset`.
    pub eval_records: usize,
    /// Malformed records or lines skipped because of `skip_bad_examples`.
    pub skipped_bad: usize,
    /// The first few skipped records' `file:line: reason`.
    pub bad_examples: Vec<String>,
    /// Examples cut by `cutoff_len`.
    pub truncated: usize,
    /// Examples removed because no label survived truncation (each is also logged).
    pub dropped_no_label: usize,
    /// Training examples (sequences after packing).
    pub train_examples: usize,
    /// Evaluation examples.
    pub eval_examples: usize,
    /// Tokens in the training split.
    pub train_tokens: u64,
    /// Trained-on (label) tokens in the training split.
    pub train_label_tokens: u64,
    /// Tokens in the evaluation split.
    pub eval_tokens: u64,
    /// Whether sequences were packed.
    pub packed: bool,
    /// Resolved template name.
    pub template: String,
    /// True when the examples came from the cache instead of being tokenised in this run.
    pub cache_hit: bool,
    /// The cache file.
    pub cache_path: String,
    /// Seconds spent reading and tokenising (in the run that tokenised).
    pub tokenize_seconds: f64,
}

/// How many bad-record messages [`DataStats::bad_examples`] keeps.
pub const MAX_BAD_EXAMPLES: usize = 20;
