//! Turning raw JSON records into conversations (`sft`) or texts (`pt`), following LLaMA-Factory's
//! converters: alpaca's prompt is `instruction\ninput` (empty parts left out) after the `history`
//! pairs; sharegpt messages alternate user/observation and assistant/function turns after an
//! optional leading system message. Ranking records (`ranking: true`) end with a user turn and
//! carry a chosen and a rejected answer to it (alpaca: two string columns; sharegpt: one message
//! each). Every rule LLaMA-Factory enforces by dropping a record with a warning is an error here
//! (or, with `skip_bad_examples`, a counted skip).

use serde_json::Value;

use crate::source::{Columns, DatasetSpec, Formatting, Tags};

/// A conversation: an optional system prompt and (user, assistant) turns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub system: Option<String>,
    pub turns: Vec<(String, String)>,
}

/// A preference record: the conversation up to a last user turn, and two answers to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preference {
    pub system: Option<String>,
    /// The earlier (user, assistant) turns.
    pub history: Vec<(String, String)>,
    /// The last user turn, which `chosen` and `rejected` answer.
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

impl Preference {
    /// The whole conversation, answered with `response`.
    pub fn turns(&self, response: &str) -> Vec<(String, String)> {
        let mut turns = self.history.clone();
        turns.push((self.prompt.clone(), response.to_string()));
        turns
    }
}

/// One usable record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sample {
    Chat(Conversation),
    Text(String),
    Pair(Preference),
    /// `stage: kto`: a conversation whose last answer is tagged desirable (`true`) or not.
    Feedback(Conversation, bool),
}

/// The layout a spec resolves to once its first record is known.
#[derive(Debug, Clone)]
pub struct Layout {
    pub formatting: Formatting,
    pub columns: Columns,
    pub tags: Tags,
    /// Records are preference pairs.
    pub ranking: bool,
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
        ranking: spec.ranking,
    }
}

/// Converts one record. `Err` carries a message naming the column at fault.
pub fn convert(layout: &Layout, record: &Value, pretraining: bool) -> Result<Sample, String> {
    let obj = record.as_object().ok_or("a record must be a JSON object")?;
    let sample = match (layout.formatting, layout.ranking) {
        (Formatting::Alpaca, false) => alpaca(&layout.columns, obj, pretraining),
        (Formatting::Sharegpt, false) => sharegpt(&layout.columns, &layout.tags, obj, pretraining),
        (Formatting::Alpaca, true) => alpaca_pair(&layout.columns, obj),
        (Formatting::Sharegpt, true) => sharegpt_pair(&layout.columns, &layout.tags, obj),
    }?;
    match (&layout.columns.kto_tag, sample) {
        (Some(col), Sample::Chat(conv)) => Ok(Sample::Feedback(conv, kto_tag(obj, col)?)),
        (_, sample) => Ok(sample),
    }
}

/// The boolean `kto_tag` column of a record.
fn kto_tag(obj: &Obj, col: &str) -> Result<bool, String> {
    match obj.get(col) {
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!(
            "column `{col}` (kto_tag) must be true or false, found {}",
            kind(other)
        )),
        None => Err(format!(
            "missing column `{col}` (kto_tag; record keys: {})",
            keys(obj)
        )),
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

/// Alpaca's user turn: `instruction\ninput`, empty parts left out.
fn alpaca_user(cols: &Columns, obj: &Obj) -> Result<String, String> {
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
    Ok([prompt, query]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n"))
}

fn alpaca(cols: &Columns, obj: &Obj, pretraining: bool) -> Result<Sample, String> {
    let user = alpaca_user(cols, obj)?;
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
    let mut turns = alpaca_history(cols, obj)?;
    turns.push((user, response));
    let system = alpaca_system(cols, obj)?;
    Ok(Sample::Chat(Conversation { system, turns }))
}

fn alpaca_pair(cols: &Columns, obj: &Obj) -> Result<Sample, String> {
    let prompt = alpaca_user(cols, obj)?;
    let answer = |col: &str| match obj.get(col) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "column `{col}` must be a string, found {}",
            kind(other)
        )),
        None => Err(format!(
            "missing column `{col}` (record keys: {})",
            keys(obj)
        )),
    };
    Ok(Sample::Pair(Preference {
        system: alpaca_system(cols, obj)?,
        history: alpaca_history(cols, obj)?,
        prompt,
        chosen: answer(&cols.chosen)?,
        rejected: answer(&cols.rejected)?,
    }))
}

fn alpaca_system(cols: &Columns, obj: &Obj) -> Result<Option<String>, String> {
    Ok(opt_str(obj, cols.system.as_deref())?
        .filter(|s| !s.is_empty())
        .map(str::to_string))
}

/// The `history` column's [prompt, response] pairs.
fn alpaca_history(cols: &Columns, obj: &Obj) -> Result<Vec<(String, String)>, String> {
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
    Ok(turns)
}

/// A sharegpt record's messages: the system prompt (a leading system message overrides the
/// `system` column) and the messages after it, `offset` being the index of the first of them.
struct Messages<'a> {
    system: Option<String>,
    rest: Vec<(&'a str, &'a str)>,
    offset: usize,
}

fn messages<'a>(cols: &Columns, tags: &Tags, obj: &'a Obj) -> Result<Messages<'a>, String> {
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
        parsed.push(message(m, tags).ok_or_else(|| {
            format!(
                "column `{col}`[{i}] needs string `{}` and `{}` keys",
                tags.role, tags.content
            )
        })?);
    }
    let mut system = opt_str(obj, cols.system.as_deref())?
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let mut offset = 0;
    if let Some(&(r, c)) = parsed.first() {
        if r == tags.system {
            system = Some(c.to_string()).filter(|s| !s.is_empty());
            offset = 1;
        }
    }
    Ok(Messages {
        system,
        rest: parsed.split_off(offset),
        offset,
    })
}

/// A message's (role, content), when both are strings.
fn message<'a>(m: &'a Value, tags: &Tags) -> Option<(&'a str, &'a str)> {
    let role = m.get(&tags.role).and_then(Value::as_str)?;
    let content = m.get(&tags.content).and_then(Value::as_str)?;
    Some((role, content))
}

fn is_user(tags: &Tags, role: &str) -> bool {
    role == tags.user || role == tags.observation
}

fn is_assistant(tags: &Tags, role: &str) -> bool {
    role == tags.assistant || role == tags.function
}

/// Alternating user/assistant messages as (user, assistant) turns; `offset` numbers the messages
/// in errors.
fn turns(
    col: &str,
    tags: &Tags,
    rest: &[(&str, &str)],
    offset: usize,
) -> Result<Vec<(String, String)>, String> {
    let mut turns = Vec::new();
    for (i, pair) in rest.chunks(2).enumerate() {
        let (ur, uc) = pair[0];
        if !is_user(tags, ur) {
            return Err(format!(
                "column `{col}`: message {} has role `{ur}` where a `{}` (or `{}`) message must come",
                2 * i + offset,
                tags.user,
                tags.observation
            ));
        }
        let Some(&(ar, ac)) = pair.get(1) else {
            return Err(format!("column `{col}`: the conversation ends with a `{ur}` message; it must end with an `{}` message", tags.assistant));
        };
        if !is_assistant(tags, ar) {
            return Err(format!(
                "column `{col}`: message {} has role `{ar}` where an `{}` (or `{}`) message must come",
                2 * i + 1 + offset,
                tags.assistant,
                tags.function
            ));
        }
        turns.push((uc.to_string(), ac.to_string()));
    }
    Ok(turns)
}

fn sharegpt(cols: &Columns, tags: &Tags, obj: &Obj, pretraining: bool) -> Result<Sample, String> {
    let col = &cols.messages;
    let m = messages(cols, tags, obj)?;
    if pretraining {
        return m
            .rest
            .first()
            .map(|(_, c)| Sample::Text(c.to_string()))
            .ok_or_else(|| format!("column `{col}` has no message"));
    }
    let turns = turns(col, tags, &m.rest, m.offset)?;
    if turns.is_empty() {
        return Err(format!("column `{col}` has no user/assistant turn"));
    }
    Ok(Sample::Chat(Conversation {
        system: m.system,
        turns,
    }))
}

/// A ranking record: the conversation ends with a user message, and the `chosen` and `rejected`
/// columns each hold one assistant message answering it.
fn sharegpt_pair(cols: &Columns, tags: &Tags, obj: &Obj) -> Result<Sample, String> {
    let col = &cols.messages;
    let m = messages(cols, tags, obj)?;
    let Some((&(last_role, prompt), earlier)) = m.rest.split_last() else {
        return Err(format!("column `{col}` has no user message"));
    };
    if !is_user(tags, last_role) || earlier.len() % 2 != 0 {
        return Err(format!(
            "column `{col}`: a ranking conversation must end with a `{}` message (the prompt the chosen and rejected answers reply to), in alternating turns",
            tags.user
        ));
    }
    let history = turns(col, tags, earlier, m.offset)?;
    let answer = |c: &str| -> Result<String, String> {
        let value = obj
            .get(c)
            .ok_or_else(|| format!("missing column `{c}` (record keys: {})", keys(obj)))?;
        let (role, content) = message(value, tags).ok_or_else(|| {
            format!(
                "column `{c}` must be one message with string `{}` and `{}` keys",
                tags.role, tags.content
            )
        })?;
        if !is_assistant(tags, role) {
            return Err(format!(
                "column `{c}` has role `{role}` where an `{}` (or `{}`) message must come",
                tags.assistant, tags.function
            ));
        }
        Ok(content.to_string())
    };
    Ok(Sample::Pair(Preference {
        system: m.system,
        history,
        prompt: prompt.to_string(),
        chosen: answer(&cols.chosen)?,
        rejected: answer(&cols.rejected)?,
    }))
}

fn keys(obj: &Obj) -> String {
    obj.keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
