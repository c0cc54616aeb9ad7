//! Resolving dataset names to files and record layouts: `dataset_info.json` entries (LLaMA-Factory's
//! `file_name`, `formatting`, `columns`, `tags`, `num_samples`) or, without an entry, a file in
//! `dataset_dir` named `name`, `name.json` or `name.jsonl` whose layout is `dataset_format` or is
//! detected from its first record.

use std::path::{Path, PathBuf};

use lf_api::training::DatasetFormat;
use serde_json::Value;

use crate::error::DataError;

/// Record layout family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formatting {
    /// `instruction` / `input` / `output` (+ `history`, `system`); plain `text` for `pt`.
    Alpaca,
    /// A list of messages (`conversations` with `from`/`value`, or OpenAI-style `messages`).
    Sharegpt,
}

/// Column names (LLaMA-Factory `columns`, with its defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub prompt: Option<String>,
    pub query: Option<String>,
    pub response: Option<String>,
    pub history: Option<String>,
    pub messages: String,
    pub system: Option<String>,
    /// Ranking datasets: the preferred and the dispreferred response (alpaca: strings; sharegpt:
    /// one message each).
    pub chosen: String,
    pub rejected: String,
    /// `stage: kto`: the boolean column saying whether the record's answer is desirable.
    pub kto_tag: Option<String>,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            prompt: Some("instruction".into()),
            query: Some("input".into()),
            response: Some("output".into()),
            history: None,
            messages: "conversations".into(),
            system: None,
            chosen: "chosen".into(),
            rejected: "rejected".into(),
            kto_tag: None,
        }
    }
}

/// Message tags of the sharegpt layout (LLaMA-Factory `tags`, with its defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tags {
    pub role: String,
    pub content: String,
    pub user: String,
    pub assistant: String,
    pub observation: String,
    pub function: String,
    pub system: String,
}

impl Default for Tags {
    fn default() -> Self {
        Tags {
            role: "from".into(),
            content: "value".into(),
            user: "human".into(),
            assistant: "gpt".into(),
            observation: "observation".into(),
            function: "function_call".into(),
            system: "system".into(),
        }
    }
}

impl Tags {
    /// OpenAI-style `messages: [{role, content}]`.
    pub fn openai() -> Self {
        Tags {
            role: "role".into(),
            content: "content".into(),
            user: "user".into(),
            assistant: "assistant".into(),
            observation: "tool".into(),
            function: "function_call".into(),
            system: "system".into(),
        }
    }
}

/// Everything needed to read one named dataset.
#[derive(Debug, Clone)]
pub struct DatasetSpec {
    pub name: String,
    /// The data files (a `file_name` directory expands to its files, sorted).
    pub files: Vec<PathBuf>,
    /// `None`: detect from the first record.
    pub formatting: Option<Formatting>,
    pub columns: Columns,
    /// `None`: detect from the first message (`role` ⇒ OpenAI tags, else sharegpt defaults).
    pub tags: Option<Tags>,
    /// `num_samples`: a seeded random subset (with repeats when larger than the dataset).
    pub num_samples: Option<usize>,
    /// `ranking: true`: records hold a prompt and a chosen and a rejected response (`stage: dpo`).
    pub ranking: bool,
    /// True for a plain file without a `dataset_info.json` entry: its columns (and, unless
    /// `dataset_format` is set, its format) are detected from the first record.
    pub detect: bool,
}

/// The contents of `dataset_dir/dataset_info.json`, if present, with its raw bytes for the cache key.
pub struct DatasetInfo {
    pub path: PathBuf,
    pub entries: serde_json::Map<String, Value>,
}

impl DatasetInfo {
    /// Reads `dir/dataset_info.json`; `Ok(None)` when it does not exist.
    pub fn load(dir: &Path) -> Result<Option<Self>, DataError> {
        let path = dir.join("dataset_info.json");
        let Some(bytes) = crate::files::read_optional_regular(&path)? else {
            return Ok(None);
        };
        match crate::tokenizer::parse_json(&path, &bytes)? {
            Value::Object(entries) => Ok(Some(DatasetInfo { path, entries })),
            _ => Err(DataError::config(
                "dataset_info.json",
                format!("{} must be a JSON object of dataset names", path.display()),
            )),
        }
    }
}

/// Resolves a comma-separated list of dataset names (`key` names the config key for errors).
pub fn resolve_all(
    key: &str,
    names: &str,
    dir: &Path,
    info: Option<&DatasetInfo>,
    default_format: Option<DatasetFormat>,
) -> Result<Vec<DatasetSpec>, DataError> {
    let specs: Vec<DatasetSpec> = names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| resolve(key, n, dir, info, default_format))
        .collect::<Result<_, _>>()?;
    if specs.is_empty() {
        return Err(DataError::config(key, "names no dataset"));
    }
    Ok(specs)
}

fn resolve(
    key: &str,
    name: &str,
    dir: &Path,
    info: Option<&DatasetInfo>,
    default_format: Option<DatasetFormat>,
) -> Result<DatasetSpec, DataError> {
    if let Some(entry) = info.and_then(|i| i.entries.get(name)) {
        // `info` is Some here.
        let info_path = info.map(|i| i.path.clone()).unwrap_or_default();
        return from_entry(name, entry, dir, &info_path);
    }
    let formatting = default_format.map(|f| match f {
        DatasetFormat::Alpaca => Formatting::Alpaca,
        DatasetFormat::Sharegpt => Formatting::Sharegpt,
    });
    for candidate in [
        name.to_string(),
        format!("{name}.json"),
        format!("{name}.jsonl"),
    ] {
        let path = crate::files::confined_join(dir, &candidate)
            .map_err(|e| DataError::config(key, format!("dataset `{name}`: {e}")))?;
        if path.is_file() {
            return Ok(DatasetSpec {
                name: name.into(),
                files: vec![path],
                formatting,
                columns: Columns::default(),
                tags: None,
                num_samples: None,
                ranking: false,
                detect: true,
            });
        }
    }
    let known = info
        .map(|i| i.entries.keys().cloned().collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let hint = match info {
        Some(i) => format!(" and is not a key of {} (keys: {known})", i.path.display()),
        None => " and there is no dataset_info.json".to_string(),
    };
    Err(DataError::config(
        key,
        format!(
            "dataset `{name}`: no file {0}/{name}, {0}/{name}.json or {0}/{name}.jsonl{hint}",
            dir.display()
        ),
    ))
}

fn from_entry(
    name: &str,
    entry: &Value,
    dir: &Path,
    info_path: &Path,
) -> Result<DatasetSpec, DataError> {
    let key = format!("{}[{name}]", info_path.display());
    let obj = entry
        .as_object()
        .ok_or_else(|| DataError::config(&key, "must be an object"))?;
    let file_name = match obj.get("file_name").and_then(Value::as_str) {
        Some(f) => f,
        None => {
            let remote = [
                "hf_hub_url",
                "ms_hub_url",
                "om_hub_url",
                "script_url",
                "cloud_file_name",
            ]
            .iter()
            .find(|k| obj.contains_key(**k));
            return Err(DataError::config(
                &key,
                match remote {
                    Some(k) => format!("`{k}` datasets are not supported (no network in training pods); download the data and set `file_name`"),
                    None => "needs `file_name`".to_string(),
                },
            ));
        }
    };
    let ranking = match obj.get("ranking") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(DataError::config(&key, "`ranking` must be true or false")),
    };
    let formatting = match obj.get("formatting").and_then(Value::as_str) {
        None | Some("alpaca") => Formatting::Alpaca,
        Some("sharegpt") => Formatting::Sharegpt,
        Some(other) => {
            return Err(DataError::config(
                &key,
                format!("unknown `formatting: {other}` (use alpaca or sharegpt)"),
            ))
        }
    };
    let mut columns = Columns::default();
    if let Some(cols) = obj.get("columns") {
        let cols = cols
            .as_object()
            .ok_or_else(|| DataError::config(&key, "`columns` must be an object"))?;
        for (k, v) in cols {
            let v = v.as_str().map(str::to_string);
            match k.as_str() {
                "prompt" => columns.prompt = v,
                "query" => columns.query = v,
                "response" => columns.response = v,
                "history" => columns.history = v,
                "messages" => columns.messages = v.unwrap_or_else(|| "conversations".into()),
                "system" => columns.system = v,
                "tools" | "images" | "videos" | "audios" => {
                    if v.is_some() {
                        return Err(DataError::config(
                            &key,
                            format!(
                                "column `{k}` is not supported (text-only models, no tool calls)"
                            ),
                        ));
                    }
                }
                "chosen" | "rejected" => {
                    let v = v.ok_or_else(|| {
                        DataError::config(&key, format!("column `{k}` must name a column"))
                    })?;
                    if k == "chosen" {
                        columns.chosen = v;
                    } else {
                        columns.rejected = v;
                    }
                }
                "kto_tag" => columns.kto_tag = v,
                other => {
                    return Err(DataError::config(
                        &key,
                        format!("unknown column role `{other}`"),
                    ))
                }
            }
        }
    }
    let tags = match obj.get("tags") {
        None => None,
        Some(t) => {
            let t = t
                .as_object()
                .ok_or_else(|| DataError::config(&key, "`tags` must be an object"))?;
            let mut tags = Tags::default();
            for (k, v) in t {
                let v = v
                    .as_str()
                    .ok_or_else(|| DataError::config(&key, format!("tag `{k}` must be a string")))?
                    .to_string();
                match k.as_str() {
                    "role_tag" => tags.role = v,
                    "content_tag" => tags.content = v,
                    "user_tag" => tags.user = v,
                    "assistant_tag" => tags.assistant = v,
                    "observation_tag" => tags.observation = v,
                    "function_tag" => tags.function = v,
                    "system_tag" => tags.system = v,
                    other => return Err(DataError::config(&key, format!("unknown tag `{other}`"))),
                }
            }
            Some(tags)
        }
    };
    let tags = tags.or_else(|| (formatting == Formatting::Sharegpt).then(Tags::default));
    let num_samples = obj
        .get("num_samples")
        .and_then(Value::as_u64)
        .map(|n| n as usize);
    let path = crate::files::confined_join(dir, file_name)
        .map_err(|e| DataError::config(&key, format!("file_name {e}")))?;
    let files = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
            .map_err(|e| DataError::io(&path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("json" | "jsonl")
                    )
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(DataError::config(
                &key,
                format!("directory {} has no .json or .jsonl files", path.display()),
            ));
        }
        files
    } else if path.is_file() {
        vec![path]
    } else if path.exists() {
        // A FIFO, socket or device: say what it is (opening it could block forever).
        crate::files::open_regular(&path)?;
        vec![path]
    } else {
        return Err(DataError::config(
            &key,
            format!("file_name {} does not exist", path.display()),
        ));
    };
    Ok(DatasetSpec {
        name: name.into(),
        files,
        formatting: Some(formatting),
        columns,
        tags,
        num_samples,
        ranking,
        detect: false,
    })
}
