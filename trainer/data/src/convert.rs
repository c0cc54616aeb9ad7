//! Turning raw JSON records into conversations (`sft`) or texts (`pt`), following LLaMA-Factory's
//! converters: alpaca's prompt is `instruction\ninput` (empty parts left out) after the `history`
//! pairs; sharegpt messages alternate user/observation and assistant/function turns after an
//! optional leading system message. Every rule LLaMA-Factory enforces by dropping a record with a
//! warning is an error here (or, with `skip_bad_examples`, a counted skip).

use serde_json::Value;

use crate::source::{Columns, DatasetSpec, Formatting, Tags};

/// A conversation: an optional system prompt and (user, assistant) turns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub system: Option<String>,
    pub turns: Vec<(String, String)>,
}

/// One usable record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sample {
    Chat(Conversation),
    Text(String),
}

/// The layout a spec resolves to once its first record is known.
#[derive(Debug, Clone)]
pub struct Layout {
    pub formatting: Formatting,
    pub columns: Columns,
    pub tags: Tags,
}

/// Fills in what `spec` leaves open (format, tags) from the first record.
pub fn detect_layout(spec: &DatasetSpec, first: Option<&Value>) -> Layout {
    let mut columns = spec.columns.clone();
    let has = |k: &str| first.and_then(|v| v.get(k)).is_some();
    let formatting = spec.formatting.unwrap_or_else(|| {
        if has("conversations") || has("messages") {
            Formatting::Sharegpt
        } else {
            Formatting::Alpaca
        }
    });
    if spec.detect {
        // Files without a dataset_info.json entry: pick the columns the record actually has.
        if formatting == Formatting::Sharegpt && !has("conversations") && has("messages") {
            columns.messages = "messages".into();
        }
        if formatting == Formatting::Alpaca {
            if !has("instruction") && has("text") {
                columns = Columns {
                    prompt: Some("text".into()),
                    query: None,
                    response: None,
                    ..Columns::default()
                };
            }
            columns.history = Some("history".into());
        }
        columns.system = columns.system.or(Some("system".into()));
    }
    let tags = spec.tags.clone().unwrap_or_else(|| {
        let first_msg = first
            .and_then(|v| v.get(&columns.messages))
            .and_then(Value::as_array)
            .and_then(|a| a.first());
        if first_msg.and_then(|m| m.get("role")).is_some() {
            Tags::openai()
        } else {
            Tags::default()
        }
    });
    Layout {
        formatting,
        columns,
        tags,
    }
}

/// Converts one record. `Err` carries a message naming the column at fault.
pub fn convert(layout: &Layout, record: &Value, pretraining: bool) -> Result<Sample, String> {
    let obj = record.as_object().ok_or("a record must be a JSON object")?;
    match layout.formatting {
        Formatting::Alpaca => alpaca(&layout.columns, obj, pretraining),
        Formatting::Sharegpt => sharegpt(&layout.columns, &layout.tags, obj, pretraining),
    }
}

type Obj = serde_json::Map<String, Value>;

/// An optional string column: absent or null is `None`; another type is an error.
fn opt_str<'a>(obj: &'a Obj, col: Option<&str>) -> Result<Option<&'a str>, String> {
    match col.and_then(|c| obj.get(c).map(|v| (c, v))) {
        None | Some((_, Value::Null)) => Ok(None),
        Some((_, Value::String(s))) => Ok(Some(s)),
        Some((c, other)) => Err(format!(
            "column `{c}` must be a string, found {}",
            kind(other)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn alpaca(cols: &Columns, obj: &Obj, pretraining: bool) -> Result<Sample, String> {
    let prompt = opt_str(obj, cols.prompt.as_deref())?;
    let query = opt_str(obj, cols.query.as_deref())?;
    if prompt.is_none() && query.is_none() {
        let names: Vec<&str> = [cols.prompt.as_deref(), cols.query.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        return Err(format!(
            "missing column `{}` (record keys: {})",
            names.join("` or `"),
            keys(obj)
        ));
    }
    let user = [prompt, query]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    if pretraining {
        return Ok(Sample::Text(user));
    }
    let response = match opt_str(obj, cols.response.as_deref())? {
        Some(r) => r.to_string(),
        None => {
            return Err(match &cols.response {
                Some(c) => format!("missing column `{c}` (record keys: {})", keys(obj)),
                None => "this dataset has no response column (`columns.response`); it can only be used with `stage: pt`".into(),
            })
        }
    };
    let mut turns = Vec::new();
    if let Some(col) = cols.history.as_deref() {
        match obj.get(col) {
            None | Some(Value::Null) => {}
            Some(Value::Array(pairs)) => {
                for (i, pair) in pairs.iter().enumerate() {
                    match pair.as_array().map(Vec::as_slice) {
                        Some([Value::String(q), Value::String(a)]) => {
                            turns.push((q.clone(), a.clone()))
                        }
                        _ => {
                            return Err(format!(
                                "column `{col}`[{i}] must be a [prompt, response] pair of strings"
                            ))
                        }
                    }
                }
            }
            Some(other) => {
                return Err(format!(
                    "column `{col}` must be a list of [prompt, response] pairs, found {}",
                    kind(other)
                ))
            }
        }
    }
    turns.push((user, response));
    let system = opt_str(obj, cols.system.as_deref())?
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    Ok(Sample::Chat(Conversation { system, turns }))
}

fn sharegpt(cols: &Columns, tags: &Tags, obj: &Obj, pretraining: bool) -> Result<Sample, String> {
    let col = &cols.messages;
    let messages = match obj.get(col) {
        Some(Value::Array(m)) => m,
        Some(other) => {
            return Err(format!(
                "column `{col}` must be a list of messages, found {}",
                kind(other)
            ))
        }
        None => {
            return Err(format!(
                "missing column `{col}` (record keys: {})",
                keys(obj)
            ))
        }
    };
    let mut parsed = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = m.get(&tags.role).and_then(Value::as_str);
        let content = m.get(&tags.content).and_then(Value::as_str);
        match (role, content) {
            (Some(r), Some(c)) => parsed.push((r, c)),
            _ => {
                return Err(format!(
                    "column `{col}`[{i}] needs string `{}` and `{}` keys",
                    tags.role, tags.content
                ))
            }
        }
    }
    let mut system = opt_str(obj, cols.system.as_deref())?
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let mut rest = parsed.as_slice();
    if let Some(((r, c), tail)) = rest.split_first() {
        if *r == tags.system {
            system = Some(c.to_string()).filter(|s| !s.is_empty());
            rest = tail;
        }
    }
    if pretraining {
        return rest
            .first()
            .map(|(_, c)| Sample::Text(c.to_string()))
            .ok_or_else(|| format!("column `{col}` has no message"));
    }
    let mut turns = Vec::new();
    for (i, pair) in rest.chunks(2).enumerate() {
        let (ur, uc) = pair[0];
        if ur != tags.user && ur != tags.observation {
            return Err(format!(
                "column `{col}`: message {} has role `{ur}` where a `{}` (or `{}`) message must come",
                2 * i + usize::from(rest.len() != parsed.len()),
                tags.user,
                tags.observation
            ));
        }
        let Some(&(ar, ac)) = pair.get(1) else {
            return Err(format!("column `{col}`: the conversation ends with a `{ur}` message; it must end with an `{}` message", tags.assistant));
        };
        if ar != tags.assistant && ar != tags.function {
            return Err(format!(
                "column `{col}`: message {} has role `{ar}` where an `{}` (or `{}`) message must come",
                2 * i + 1 + usize::from(rest.len() != parsed.len()),
                tags.assistant,
                tags.function
            ));
        }
        turns.push((uc.to_string(), ac.to_string()));
    }
    if turns.is_empty() {
        return Err(format!("column `{col}` has no user/assistant turn"));
    }
    Ok(Sample::Chat(Conversation { system, turns }))
}

fn keys(obj: &Obj) -> String {
    obj.keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
