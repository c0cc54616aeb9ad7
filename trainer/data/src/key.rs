//! The cache key: a SHA-256 over everything that determines the tokenised examples — the data
//! files' contents and resolved layouts, the tokenizer files, the template, and the config keys
//! that shape encoding, splitting and packing. Change any of them and the key changes; change
//! nothing and a repeated run finds its cache.

use std::io::Read;

use lf_api::training::TrainingConfig;
use sha2::{Digest, Sha256};

use crate::error::DataError;
use crate::source::DatasetSpec;
use crate::template::ChatTemplate;
use crate::tokenizer::{hex, TokenizerBundle};

/// Bump when the encoding or the cache layout changes, so old caches are never reused.
const FORMAT: &str = "lf-data tokenised cache v1";

/// Computes the cache key.
pub fn cache_key(
    cfg: &TrainingConfig,
    tok: &TokenizerBundle,
    template: &ChatTemplate,
    train: &[DatasetSpec],
    eval: &[DatasetSpec],
) -> Result<String, DataError> {
    let mut h = Sha256::new();
    let mut field = |name: &str, value: &str| {
        h.update(name.as_bytes());
        h.update([0]);
        h.update((value.len() as u64).to_le_bytes());
        h.update(value.as_bytes());
    };
    field("format", FORMAT);
    field("tokenizer", &tok.fingerprint);
    field("template", &template.fingerprint());
    let keys = serde_json::json!({
        "stage": cfg.stage,
        "cutoff_len": cfg.cutoff_len,
        "train_on_prompt": cfg.train_on_prompt,
        "mask_history": cfg.mask_history,
        "max_samples": cfg.max_samples,
        "val_size": cfg.val_size,
        "seed": cfg.seed,
        "packing": cfg.packing_enabled(),
        "default_system": cfg.default_system,
        "dataset_format": cfg.dataset_format,
        "skip_bad_examples": cfg.skip_bad_examples,
    });
    field("config", &keys.to_string());
    for (split, specs) in [("train", train), ("eval", eval)] {
        for spec in specs {
            field(
                split,
                &format!(
                    "{:?}|{:?}|{:?}|{:?}|{:?}",
                    spec.name, spec.formatting, spec.columns, spec.tags, spec.num_samples
                ),
            );
            for file in &spec.files {
                field(
                    "file",
                    &file
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
                field("sha256", &file_digest(file)?);
            }
        }
    }
    Ok(hex(&h.finalize()))
}

fn file_digest(path: &std::path::Path) -> Result<String, DataError> {
    let mut f = crate::files::open_regular(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}
