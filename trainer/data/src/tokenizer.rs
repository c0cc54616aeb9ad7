//! Loading a Hugging Face tokenizer directory: `tokenizer.json` (the fast tokenizer), and from
//! `tokenizer_config.json` / `special_tokens_map.json` the special tokens and the chat template
//! (newer repositories keep the template in `chat_template.jinja`, which wins when present).

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use crate::error::DataError;

/// Byte ranges of tokens in the encoded text.
pub type Offsets = Vec<(usize, usize)>;

/// A tokenizer with the special tokens and chat template its model directory declares.
pub struct TokenizerBundle {
    /// The fast tokenizer from `tokenizer.json`.
    pub tokenizer: Tokenizer,
    /// Where it was loaded from (for error messages).
    pub model_dir: PathBuf,
    /// `bos_token` and its id (None when the config declares none or the vocabulary lacks it).
    pub bos: Option<(String, u32)>,
    /// `eos_token` and its id.
    pub eos: Option<(String, u32)>,
    /// `pad_token` and its id; when the config declares none, the EOS token (LLaMA-Factory's rule).
    pub pad: Option<(String, u32)>,
    /// `unk_token` text, passed to chat templates.
    pub unk_token: Option<String>,
    /// `add_bos_token` from `tokenizer_config.json` (used by the `pt` stage, as in LLaMA-Factory).
    pub add_bos_token: bool,
    /// The model's own Jinja chat template, if it has one.
    pub chat_template: Option<String>,
    /// Extra end-of-sequence ids from `generation_config.json` (`eos_token_id`, int or list).
    pub generation_eos_ids: Vec<u32>,
    /// SHA-256 over every file read here; part of the tokenised-cache key.
    pub fingerprint: String,
}

impl std::fmt::Debug for TokenizerBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenizerBundle")
            .field("model_dir", &self.model_dir)
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// Loads `model_dir/tokenizer.json` plus the optional `tokenizer_config.json`,
/// `special_tokens_map.json`, `chat_template.jinja` and `generation_config.json`.
pub fn load_tokenizer(model_dir: &Path) -> Result<TokenizerBundle, DataError> {
    let mut hasher = Sha256::new();
    let tok_path = model_dir.join("tokenizer.json");
    let tok_bytes = crate::files::read_regular(&tok_path)?;
    hasher.update(&tok_bytes);
    let tokenizer = Tokenizer::from_bytes(&tok_bytes).map_err(|e| DataError::Tokenizer {
        path: tok_path.clone(),
        message: e.to_string(),
    })?;

    let config = read_optional_json(&model_dir.join("tokenizer_config.json"), &mut hasher)?;
    let special_map = read_optional_json(&model_dir.join("special_tokens_map.json"), &mut hasher)?;
    let generation = read_optional_json(&model_dir.join("generation_config.json"), &mut hasher)?;
    let jinja_path = model_dir.join("chat_template.jinja");
    let jinja = match crate::files::read_optional_regular(&jinja_path)? {
        Some(bytes) => {
            hasher.update(&bytes);
            let text = String::from_utf8(bytes).map_err(|_| {
                DataError::template("auto", format!("{} is not UTF-8", jinja_path.display()))
            })?;
            Some(text)
        }
        None => None,
    };

    let token = |key: &str| -> Option<String> {
        config
            .as_ref()
            .and_then(|c| token_text(c.get(key)?))
            .or_else(|| special_map.as_ref().and_then(|m| token_text(m.get(key)?)))
    };
    let with_id =
        |text: Option<String>| text.and_then(|t| tokenizer.token_to_id(&t).map(|id| (t, id)));
    let bos = with_id(token("bos_token"));
    let eos = with_id(token("eos_token"));
    let pad = with_id(token("pad_token")).or_else(|| eos.clone());
    let add_bos_token = config
        .as_ref()
        .and_then(|c| c.get("add_bos_token"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let chat_template = match jinja {
        Some(t) => Some(t),
        None => config
            .as_ref()
            .and_then(|c| c.get("chat_template"))
            .map(|v| select_template(v, model_dir))
            .transpose()?
            .flatten(),
    };
    let generation_eos_ids = match generation.as_ref().and_then(|g| g.get("eos_token_id")) {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    };
    Ok(TokenizerBundle {
        tokenizer,
        model_dir: model_dir.to_path_buf(),
        bos,
        eos,
        pad,
        unk_token: token("unk_token"),
        add_bos_token,
        chat_template,
        generation_eos_ids,
        fingerprint: hex(&hasher.finalize()),
    })
}

impl TokenizerBundle {
    /// Encodes `text` without adding special tokens (special-token strings inside `text` still map
    /// to their ids), as LLaMA-Factory and `apply_chat_template` do.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        Ok(self.encode_with_offsets(text)?.0)
    }

    /// Like [`encode`](Self::encode), also returning each token's byte range in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Offsets), DataError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| self.err(e))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Decodes ids to text (`skip_special` drops special tokens).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, DataError> {
        self.tokenizer
            .decode(ids, skip_special)
            .map_err(|e| self.err(e))
    }

    /// The id of a token string in the vocabulary (added tokens included).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The id used to pad batches: `pad_token`, else EOS, else 0.
    pub fn pad_id(&self) -> u32 {
        self.pad.as_ref().map(|p| p.1).unwrap_or(0)
    }

    fn err(&self, e: impl std::fmt::Display) -> DataError {
        DataError::Tokenizer {
            path: self.model_dir.join("tokenizer.json"),
            message: e.to_string(),
        }
    }
}

/// A special token in `tokenizer_config.json` is a string or an `AddedToken` object with `content`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of `{name, template}` of which we take `default`.
fn select_template(v: &Value, model_dir: &Path) -> Result<Option<String>, DataError> {
    match v {
        Value::String(s) => Ok(Some(s.clone())),
        Value::Null => Ok(None),
        Value::Array(items) => {
            let named = |n: &str| {
                items
                    .iter()
                    .find(|i| i.get("name").and_then(Value::as_str) == Some(n))
                    .and_then(|i| i.get("template"))
                    .and_then(Value::as_str)
            };
            Ok(named("default")
                .or_else(|| {
                    items
                        .first()
                        .and_then(|i| i.get("template"))
                        .and_then(Value::as_str)
                })
                .map(str::to_string))
        }
        _ => Err(DataError::config(
            "chat_template",
            format!(
                "{}: must be a string or a list of {{name, template}}",
                model_dir.join("tokenizer_config.json").display()
            ),
        )),
    }
}

fn read_optional_json(path: &Path, hasher: &mut Sha256) -> Result<Option<Value>, DataError> {
    match crate::files::read_optional_regular(path)? {
        Some(bytes) => {
            hasher.update(&bytes);
            parse_json(path, &bytes).map(Some)
        }
        None => Ok(None),
    }
}

/// Parses a whole JSON file, turning a syntax error into one that names the file, line and column.
pub(crate) fn parse_json(path: &Path, bytes: &[u8]) -> Result<Value, DataError> {
    serde_json::from_slice(bytes).map_err(|e| DataError::Json {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

/// Lower-case hexadecimal of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
