//! `prepare`: from a training config to tokenised train/eval examples, through the cache.
//!
//! Rank 0 (or a single process) looks the cache key up; on a miss it reads, tokenises (in
//! parallel), splits and packs, then writes the cache atomically. Other ranks never tokenise: they
//! wait for rank 0's cache file (bounded by `ddp_timeout`), so a slow tokenisation cannot trip a
//! collective timeout. `overwrite_cache` only makes rank 0 tokenise again: equal keys mean equal
//! inputs, so whichever file another rank reads holds the same examples.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lf_api::training::{Stage, TrainingConfig};
use rayon::prelude::*;

use crate::cache;
use crate::convert::Sample;
use crate::encode::{feedback, pairwise, pretraining, supervised, EncodeOptions, Example};
use crate::error::DataError;
use crate::load::{bad, load, Loaded, Sourced};
use crate::pack::{pack_examples, pack_text};
use crate::source::{resolve_all, DatasetInfo, DatasetSpec};
use crate::stats::{DataStats, MAX_BAD_EXAMPLES};
use crate::template::ChatTemplate;
use crate::tokenizer::TokenizerBundle;

/// Where this process sits in a data-parallel run, and where the cache lives when
/// `tokenized_path` is unset. The cache directory must be shared by all ranks that should reuse
/// rank 0's tokenisation (a shared volume across nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataContext {
    pub rank: usize,
    pub world_size: usize,
    pub cache_dir: PathBuf,
}

impl DataContext {
    /// The context for `rank` of `world_size`, caching under `<output_dir>/.tokenized` (the
    /// documented default when `tokenized_path` is unset; `./.tokenized` without `output_dir`).
    pub fn from_config(cfg: &TrainingConfig, rank: usize, world_size: usize) -> Self {
        let base = cfg
            .output_dir
            .as_deref()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        DataContext {
            rank,
            world_size,
            cache_dir: base.join(".tokenized"),
        }
    }
}

/// The tokenised splits.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedData {
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
    pub stats: DataStats,
}

/// How often a waiting rank checks for the cache file.
const POLL: Duration = Duration::from_millis(250);

/// Prepares the train and eval examples for `cfg` (see the module docs for the cache protocol);
/// `stage: kto` examples get their KL sequences ([`crate::kto::attach_kl`]).
pub fn prepare(
    cfg: &TrainingConfig,
    tok: &TokenizerBundle,
    ctx: &DataContext,
) -> Result<PreparedData, DataError> {
    let mut data = prepare_cached(cfg, tok, ctx)?;
    if cfg.stage == Stage::Kto {
        let chunk = cfg.per_device_train_batch_size;
        crate::kto::attach_kl(&mut data.train, chunk, cfg.cutoff_len);
        crate::kto::attach_kl(&mut data.eval, chunk, cfg.cutoff_len);
    }
    Ok(data)
}

/// The tokenised splits, from the cache when it holds them.
fn prepare_cached(
    cfg: &TrainingConfig,
    tok: &TokenizerBundle,
    ctx: &DataContext,
) -> Result<PreparedData, DataError> {
    let template = ChatTemplate::resolve(cfg.template.as_deref(), tok)?;
    let dir = Path::new(&cfg.dataset_dir);
    let info = DatasetInfo::load(dir)?;
    // A config that does not train (prediction with only `eval_dataset`) needs no `dataset`.
    let train_specs = match cfg.dataset.as_deref() {
        Some(names) => resolve_all("dataset", names, dir, info.as_ref(), cfg.dataset_format)?,
        None if !cfg.trains() => Vec::new(),
        None => {
            return Err(DataError::config(
                "dataset",
                "is required (comma-separated dataset names)",
            ))
        }
    };
    let eval_specs = match cfg.eval_dataset.as_deref() {
        Some(names) => {
            if cfg.val_size > 0.0 {
                return Err(DataError::config(
                    "val_size",
                    "cannot be set together with `eval_dataset`; use one of them",
                ));
            }
            resolve_all(
                "eval_dataset",
                names,
                dir,
                info.as_ref(),
                cfg.dataset_format,
            )?
        }
        None => Vec::new(),
    };
    check_ranking(cfg, train_specs.iter().chain(&eval_specs))?;
    let key = crate::key::cache_key(cfg, tok, &template, &train_specs, &eval_specs)?;
    let cache_dir = cfg
        .tokenized_path
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| ctx.cache_dir.clone());
    let path = cache::cache_path(&cache_dir, &key);
    let marker = cache::error_marker(&cache_dir, &key);

    if ctx.rank != 0 && ctx.world_size > 1 {
        let (mut stats, train, eval) = cache::wait_for(
            &path,
            &marker,
            ctx.rank,
            Duration::from_secs(cfg.ddp_timeout.max(1)),
            POLL,
        )?;
        stats.cache_hit = true;
        return Ok(PreparedData { train, eval, stats });
    }
    if !cfg.overwrite_cache && path.is_file() {
        match cache::read(&path) {
            Ok((mut stats, train, eval)) => {
                stats.cache_hit = true;
                tracing::info!(path = %path.display(), train = train.len(), eval = eval.len(), "tokenised dataset loaded from cache");
                return Ok(PreparedData { train, eval, stats });
            }
            Err(e) => tracing::warn!("{e}; tokenising again"),
        }
    }
    let _ = std::fs::remove_file(&marker);
    let result = tokenise(cfg, tok, &template, &train_specs, &eval_specs);
    let mut data = match result {
        Ok(d) => d,
        Err(e) => {
            if ctx.world_size > 1 && std::fs::create_dir_all(&cache_dir).is_ok() {
                let _ = std::fs::write(&marker, e.to_string());
            }
            return Err(e);
        }
    };
    data.stats.cache_path = path.display().to_string();
    cache::write(&path, &data.stats, &data.train, &data.eval)?;
    tracing::info!(path = %path.display(), train = data.train.len(), eval = data.eval.len(), seconds = data.stats.tokenize_seconds, "dataset tokenised and cached");
    Ok(data)
}

/// Ranking datasets are what the preference stage trains on, and all it trains on (LLaMA-Factory's
/// rule); likewise datasets with a `kto_tag` column for `stage: kto`.
fn check_ranking<'a>(
    cfg: &TrainingConfig,
    specs: impl Iterator<Item = &'a DatasetSpec>,
) -> Result<(), DataError> {
    for spec in specs {
        let tagged = spec.columns.kto_tag.is_some();
        if tagged != (cfg.stage == Stage::Kto) || (tagged && spec.ranking) {
            let why = if cfg.stage == Stage::Kto {
                "has no `kto_tag` column (`\"columns\": {\"kto_tag\": \"...\"}` in dataset_info.json, a boolean per record, on a dataset that is not `ranking`), which `stage: kto` needs"
            } else {
                "has a `kto_tag` column: train it with `stage: kto`"
            };
            return Err(DataError::config(
                "dataset",
                format!("dataset `{}` {why}", spec.name),
            ));
        }
        if spec.ranking != cfg.stage.is_pairwise() {
            let why = if spec.ranking {
                "is a `ranking` (preference) dataset: train it with `stage: dpo`"
            } else {
                "is not a `ranking` dataset (`\"ranking\": true` in dataset_info.json, with chosen and rejected answers), which `stage: dpo` needs"
            };
            return Err(DataError::config(
                "dataset",
                format!("dataset `{}` {why}", spec.name),
            ));
        }
    }
    Ok(())
}

/// Runs [`prepare`] on a background thread (named `lf-data-prepare`), so the caller can load the
/// model meanwhile; join the handle for the data.
pub fn spawn_prepare(
    cfg: TrainingConfig,
    tok: std::sync::Arc<TokenizerBundle>,
    ctx: DataContext,
) -> std::io::Result<std::thread::JoinHandle<Result<PreparedData, DataError>>> {
    std::thread::Builder::new()
        .name("lf-data-prepare".into())
        .spawn(move || prepare(&cfg, &tok, &ctx))
}

/// Reads, tokenises, splits and packs, without the cache.
pub fn tokenise(
    cfg: &TrainingConfig,
    tok: &TokenizerBundle,
    template: &ChatTemplate,
    train_specs: &[DatasetSpec],
    eval_specs: &[DatasetSpec],
) -> Result<PreparedData, DataError> {
    let started = Instant::now();
    let pt = cfg.stage == Stage::Pt;
    let mut stats = DataStats {
        template: template.name().to_string(),
        packed: cfg.packing_enabled(),
        ..DataStats::default()
    };
    let train_loaded = load(
        train_specs,
        cfg.max_samples,
        cfg.seed,
        pt,
        cfg.skip_bad_examples,
    )?;
    let eval_loaded = load(
        eval_specs,
        cfg.max_samples,
        cfg.seed,
        pt,
        cfg.skip_bad_examples,
    )?;
    stats.records = train_loaded.records;
    stats.eval_records = eval_loaded.records;
    let pool = match cfg.preprocessing_num_workers {
        Some(n) => Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(n.max(1))
                .build()
                .map_err(|e| DataError::config("preprocessing_num_workers", e.to_string()))?,
        ),
        None => None,
    };
    let run = || -> Result<(Vec<Example>, Vec<Example>), DataError> {
        let train = encode_all(cfg, tok, template, train_loaded, &mut stats)?;
        let eval = encode_all(cfg, tok, template, eval_loaded, &mut stats)?;
        Ok((train, eval))
    };
    let (mut train, mut eval) = match &pool {
        Some(p) => p.install(run)?,
        None => run()?,
    };
    if eval_specs.is_empty() && cfg.val_size > 0.0 {
        let n = train.len();
        let count = cfg.validation_count(n);
        if count >= n && n > 0 {
            return Err(DataError::config(
                "val_size",
                format!(
                    "{} takes all {n} examples; nothing is left to train on",
                    cfg.val_size
                ),
            ));
        }
        let mut is_eval = vec![false; n];
        for i in crate::sampler::permutation(n, cfg.seed)
            .into_iter()
            .take(count)
        {
            is_eval[i] = true;
        }
        let (e, t): (Vec<_>, Vec<_>) = train.into_iter().zip(is_eval).partition(|(_, ev)| *ev);
        train = t.into_iter().map(|(x, _)| x).collect();
        eval = e.into_iter().map(|(x, _)| x).collect();
    }
    if cfg.packing_enabled() {
        let bos = if tok.add_bos_token {
            tok.bos.as_ref().map(|b| b.1)
        } else {
            None
        };
        let pack = |v: Vec<Example>| {
            if pt {
                pack_text(v, cfg.cutoff_len, bos)
            } else {
                pack_examples(v, cfg.cutoff_len)
            }
        };
        train = pack(train);
        eval = pack(eval);
    }
    if train.is_empty() && cfg.trains() {
        return Err(DataError::config(
            "dataset",
            format!(
                "no training examples left ({} records read, {} skipped as bad, {} without labels)",
                stats.records, stats.skipped_bad, stats.dropped_no_label
            ),
        ));
    }
    stats.train_examples = train.len();
    stats.eval_examples = eval.len();
    stats.train_tokens = train.iter().map(|e| e.input_ids.len() as u64).sum();
    stats.train_label_tokens = train
        .iter()
        .map(|e| {
            e.labels
                .iter()
                .filter(|&&l| l != crate::encode::IGNORE_INDEX)
                .count() as u64
        })
        .sum();
    stats.eval_tokens = eval.iter().map(|e| e.input_ids.len() as u64).sum();
    stats.tokenize_seconds = started.elapsed().as_secs_f64();
    Ok(PreparedData { train, eval, stats })
}

/// Per-sample outcome of encoding.
enum Encoded {
    Ok { example: Example, truncated: bool },
    Bad(String),
}

fn encode_all(
    cfg: &TrainingConfig,
    tok: &TokenizerBundle,
    template: &ChatTemplate,
    loaded: Loaded,
    stats: &mut DataStats,
) -> Result<Vec<Example>, DataError> {
    record_skips(stats, loaded.skipped);
    let opts = EncodeOptions {
        cutoff_len: cfg.cutoff_len,
        train_on_prompt: cfg.train_on_prompt,
        mask_history: cfg.mask_history,
    };
    let eos = pt_eos(cfg, tok, template)?;
    let results: Vec<Result<Encoded, DataError>> = loaded
        .samples
        .par_iter()
        .map(|s| encode_one(cfg, tok, template, s, opts, eos))
        .collect();
    let mut out = Vec::with_capacity(results.len());
    for (result, s) in results.into_iter().zip(&loaded.samples) {
        match result? {
            Encoded::Ok { example, truncated } => {
                stats.truncated += usize::from(truncated);
                if example.has_labels() {
                    out.push(example);
                } else {
                    stats.dropped_no_label += 1;
                    tracing::warn!("{}:{}: no trainable token left after truncation to cutoff_len {}; example dropped", s.path.display(), s.line, cfg.cutoff_len);
                }
            }
            Encoded::Bad(message) => {
                let err = bad(&s.path, s.line, message);
                if !cfg.skip_bad_examples {
                    return Err(err);
                }
                record_skips(stats, vec![err.to_string()]);
            }
        }
    }
    Ok(out)
}

fn record_skips(stats: &mut DataStats, skipped: Vec<String>) {
    for s in skipped {
        tracing::warn!("skipped bad example: {s}");
        stats.skipped_bad += 1;
        if stats.bad_examples.len() < MAX_BAD_EXAMPLES {
            stats.bad_examples.push(s);
        }
    }
}

/// The EOS appended to pre-training texts. As in LLaMA-Factory: `llama3` uses `<|end_of_text|>`;
/// other templates that replace EOS by their turn-end stop word (`qwen`, `gemma`, `phi`, `phi4`,
/// `chatml`) use that word;
/// otherwise the tokenizer's `eos_token`.
fn pt_eos(
    cfg: &TrainingConfig,
    tok: &TokenizerBundle,
    template: &ChatTemplate,
) -> Result<Option<u32>, DataError> {
    if cfg.stage != Stage::Pt {
        return Ok(None);
    }
    let replaced = match template {
        ChatTemplate::Named(t) if t.name == "llama3" => tok.token_id("<|end_of_text|>"),
        ChatTemplate::Named(t) => t.stop_words.first().and_then(|w| tok.token_id(w)),
        ChatTemplate::Auto(_) => None,
    };
    match replaced.or(tok.eos.as_ref().map(|e| e.1)) {
        Some(id) => Ok(Some(id)),
        None => Err(DataError::config(
            "stage",
            format!(
                "`pt` appends EOS to every text, but {} declares no eos_token",
                tok.model_dir.display()
            ),
        )),
    }
}

fn encode_one(
    cfg: &TrainingConfig,
    tok: &TokenizerBundle,
    template: &ChatTemplate,
    s: &Sourced,
    opts: EncodeOptions,
    eos: Option<u32>,
) -> Result<Encoded, DataError> {
    match &s.sample {
        Sample::Text(text) => {
            let mut ids = Vec::new();
            if tok.add_bos_token && !cfg.packing_enabled() {
                ids.extend(tok.bos.as_ref().map(|b| b.1));
            }
            ids.extend(tok.encode(text)?);
            ids.extend(eos);
            let truncated = !cfg.packing_enabled() && ids.len() > cfg.cutoff_len;
            if truncated {
                ids.truncate(cfg.cutoff_len);
            }
            Ok(Encoded::Ok {
                example: pretraining(ids),
                truncated,
            })
        }
        Sample::Feedback(conv, desirable) => {
            let system = conv.system.as_deref().or(cfg.default_system.as_deref());
            match template.encode_prompt_answer(tok, system, &conv.turns) {
                Ok((prompt, answer)) => {
                    let (example, truncated) =
                        feedback(&prompt, &answer, *desirable, cfg.cutoff_len);
                    Ok(Encoded::Ok { example, truncated })
                }
                Err(e @ DataError::Template { .. }) => Ok(Encoded::Bad(e.to_string())),
                Err(e) => Err(e),
            }
        }
        Sample::Chat(conv) => {
            let system = conv.system.as_deref().or(cfg.default_system.as_deref());
            match template.encode_pairs(tok, system, &conv.turns) {
                Ok(pairs) => {
                    let (example, truncated) = supervised(&pairs, opts);
                    Ok(Encoded::Ok { example, truncated })
                }
                // A template that rejects this conversation (e.g. `raise_exception`) is a bad record.
                Err(e @ DataError::Template { .. }) => Ok(Encoded::Bad(e.to_string())),
                Err(e) => Err(e),
            }
        }
        Sample::Pair(pair) => {
            let system = pair.system.as_deref().or(cfg.default_system.as_deref());
            let encoded = template
                .encode_prompt_answer(tok, system, &pair.turns(&pair.chosen))
                .and_then(|(prompt, chosen)| {
                    let rejected =
                        template.encode_prompt_answer(tok, system, &pair.turns(&pair.rejected))?;
                    Ok((prompt, chosen, rejected.1))
                });
            match encoded {
                Ok((prompt, chosen, rejected)) => {
                    let (example, truncated) =
                        pairwise(&prompt, &chosen, &rejected, cfg.cutoff_len);
                    Ok(Encoded::Ok { example, truncated })
                }
                Err(e @ DataError::Template { .. }) => Ok(Encoded::Bad(e.to_string())),
                Err(e) => Err(e),
            }
        }
    }
}
