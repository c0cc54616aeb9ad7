//! Chat templates: LLaMA-Factory's named templates ([`named`]) and `auto`, the model's own Jinja
//! `chat_template` ([`jinja`]). Both produce, for a conversation, per-turn (prompt ids, response
//! ids) pairs, from which [`crate::encode::supervised`] builds masked, truncated examples.
//!
//! For `auto` the label mask comes from rendering prefix by prefix: the response of turn `k` is the
//! text that `messages[..=2k+1]` adds to `messages[..=2k]` rendered with `add_generation_prompt`.
//! The whole conversation is tokenised once (exactly the ids `apply_chat_template` produces) and
//! each token is assigned to the span its first byte falls in.

pub mod jinja;
pub mod named;
mod strftime;

use sha2::{Digest, Sha256};

use crate::encode::{supervised, EncodeOptions};
use crate::error::DataError;
use crate::tokenizer::{hex, TokenizerBundle};
use jinja::{JinjaTemplate, RenderVars};
use named::{NamedTemplate, Piece};

/// Per-turn (prompt ids, response ids).
pub type Pairs = Vec<(Vec<u32>, Vec<u32>)>;

/// A resolved chat template.
pub enum ChatTemplate {
    /// One of LLaMA-Factory's templates.
    Named(&'static NamedTemplate),
    /// The tokenizer's own `chat_template`.
    Auto(Box<JinjaTemplate>),
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChatTemplate({})", self.name())
    }
}

impl ChatTemplate {
    /// Resolves the config's `template`: a named template, `auto` (the tokenizer's
    /// `chat_template`, an error when it has none), or unset (`auto` when the tokenizer has a
    /// chat template, else `empty`).
    pub fn resolve(cfg_template: Option<&str>, tok: &TokenizerBundle) -> Result<Self, DataError> {
        let name = match cfg_template {
            Some(n) => n,
            None if tok.chat_template.is_some() => "auto",
            None => "empty",
        };
        if name == "auto" {
            let source = tok.chat_template.as_deref().ok_or_else(|| {
                DataError::config(
                    "template",
                    format!(
                        "`auto` needs a chat_template in {} (tokenizer_config.json or chat_template.jinja); name a template instead (one of {})",
                        tok.model_dir.display(),
                        named::NAMED.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
            return Ok(ChatTemplate::Auto(Box::new(JinjaTemplate::compile(
                source,
            )?)));
        }
        named::find(name).map(ChatTemplate::Named).ok_or_else(|| {
            DataError::config(
                "template",
                format!(
                    "unknown template `{name}`; known: auto, {}",
                    named::NAMED
                        .iter()
                        .map(|t| t.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }

    /// `auto` or the template's name.
    pub fn name(&self) -> &str {
        match self {
            ChatTemplate::Named(t) => t.name,
            ChatTemplate::Auto(_) => "auto",
        }
    }

    /// Identifies the template in the cache key (the Jinja source's hash for `auto`).
    pub fn fingerprint(&self) -> String {
        match self {
            ChatTemplate::Named(t) => format!("named:{}", t.name),
            ChatTemplate::Auto(j) => format!("auto:{}", hex(&Sha256::digest(j.source.as_bytes()))),
        }
    }

    /// The text of a whole conversation (what `apply_chat_template(..., tokenize=False)` returns
    /// for `auto`).
    pub fn render_conversation(
        &self,
        tok: &TokenizerBundle,
        system: Option<&str>,
        turns: &[(String, String)],
    ) -> Result<String, DataError> {
        match self {
            ChatTemplate::Named(t) => Ok(pieces_text(
                tok,
                t.format_messages(system, &flatten(turns, None))
                    .iter()
                    .flatten(),
            )),
            ChatTemplate::Auto(j) => j.render(&messages(system, turns, None), false, &vars(tok)),
        }
    }

    /// Per-turn (prompt ids, response ids) of a conversation, untruncated.
    pub fn encode_pairs(
        &self,
        tok: &TokenizerBundle,
        system: Option<&str>,
        turns: &[(String, String)],
    ) -> Result<Pairs, DataError> {
        match self {
            ChatTemplate::Named(t) => {
                let formatted = t.format_messages(system, &flatten(turns, None));
                let ids = formatted
                    .iter()
                    .map(|pieces| pieces_ids(tok, pieces))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(ids
                    .chunks(2)
                    .map(|c| (c[0].clone(), c.get(1).cloned().unwrap_or_default()))
                    .collect())
            }
            ChatTemplate::Auto(j) => auto_pairs(j, tok, system, turns),
        }
    }

    /// LLaMA-Factory's `encode_oneturn`: the conversation's last answer, and everything before
    /// it (earlier turns included) as its prompt.
    pub fn encode_prompt_answer(
        &self,
        tok: &TokenizerBundle,
        system: Option<&str>,
        turns: &[(String, String)],
    ) -> Result<(Vec<u32>, Vec<u32>), DataError> {
        let mut pairs = self.encode_pairs(tok, system, turns)?;
        let (last_prompt, answer) = pairs.pop().unwrap_or_default();
        let mut prompt: Vec<u32> = pairs
            .into_iter()
            .flat_map(|(p, a)| p.into_iter().chain(a))
            .collect();
        prompt.extend(last_prompt);
        Ok((prompt, answer))
    }

    /// A training example for a conversation: ids and labels (`-100` on prompt tokens unless
    /// `train_on_prompt`, on all but the last response with `mask_history`), truncated to
    /// `cutoff_len` with LLaMA-Factory's rule.
    pub fn encode_conversation(
        &self,
        tok: &TokenizerBundle,
        system: Option<&str>,
        turns: &[(String, String)],
        opts: EncodeOptions,
    ) -> Result<(Vec<u32>, Vec<i32>), DataError> {
        let (example, _) = supervised(&self.encode_pairs(tok, system, turns)?, opts);
        Ok((example.input_ids, example.labels))
    }

    /// The text of a generation prompt: the history, the new user message and the assistant
    /// header (`add_generation_prompt=True`).
    pub fn render_prompt(
        &self,
        tok: &TokenizerBundle,
        system: Option<&str>,
        history: &[(String, String)],
        user: &str,
    ) -> Result<String, DataError> {
        match self {
            ChatTemplate::Named(t) => Ok(pieces_text(
                tok,
                t.format_messages(system, &flatten(history, Some(user)))
                    .iter()
                    .flatten(),
            )),
            ChatTemplate::Auto(j) => {
                j.render(&messages(system, history, Some(user)), true, &vars(tok))
            }
        }
    }

    /// The ids of a generation prompt (for `chat`).
    pub fn encode_prompt(
        &self,
        tok: &TokenizerBundle,
        system: Option<&str>,
        history: &[(String, String)],
        user: &str,
    ) -> Result<Vec<u32>, DataError> {
        match self {
            ChatTemplate::Named(t) => {
                let formatted = t.format_messages(system, &flatten(history, Some(user)));
                let mut ids = Vec::new();
                for pieces in &formatted {
                    ids.extend(pieces_ids(tok, pieces)?);
                }
                Ok(ids)
            }
            ChatTemplate::Auto(_) => tok.encode(&self.render_prompt(tok, system, history, user)?),
        }
    }

    /// Token ids that end a generated answer: the template's stop words, EOS and
    /// `generation_config.json`'s `eos_token_id`s; for `auto`, also every special token the
    /// template writes right after an assistant message's content.
    pub fn stop_token_ids(&self, tok: &TokenizerBundle) -> Vec<u32> {
        let mut ids: Vec<u32> = Vec::new();
        match self {
            ChatTemplate::Named(t) => {
                ids.extend(t.stop_words.iter().filter_map(|w| tok.token_id(w)))
            }
            ChatTemplate::Auto(j) => ids.extend(auto_turn_end_specials(j, tok)),
        }
        ids.extend(tok.eos.as_ref().map(|e| e.1));
        ids.extend(tok.generation_eos_ids.iter().copied());
        let mut seen = std::collections::HashSet::new();
        ids.retain(|id| seen.insert(*id));
        ids
    }
}

/// Conversation contents in message order (user, assistant, user, ...), optionally ending with a
/// new user message.
fn flatten<'a>(turns: &'a [(String, String)], user: Option<&'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = turns
        .iter()
        .flat_map(|(u, a)| [u.as_str(), a.as_str()])
        .collect();
    out.extend(user);
    out
}

/// `(role, content)` messages for a Jinja render.
fn messages<'a>(
    system: Option<&'a str>,
    turns: &'a [(String, String)],
    user: Option<&'a str>,
) -> Vec<(&'static str, &'a str)> {
    let mut out = Vec::with_capacity(turns.len() * 2 + 2);
    if let Some(s) = system.filter(|s| !s.is_empty()) {
        out.push(("system", s));
    }
    for (u, a) in turns {
        out.push(("user", u.as_str()));
        out.push(("assistant", a.as_str()));
    }
    if let Some(u) = user {
        out.push(("user", u));
    }
    out
}

fn vars(tok: &TokenizerBundle) -> RenderVars {
    RenderVars {
        bos_token: tok.bos.as_ref().map(|b| b.0.clone()),
        eos_token: tok.eos.as_ref().map(|e| e.0.clone()),
        unk_token: tok.unk_token.clone(),
        pad_token: tok.pad.as_ref().map(|p| p.0.clone()),
    }
}

fn pieces_text<'a>(tok: &TokenizerBundle, pieces: impl Iterator<Item = &'a Piece>) -> String {
    let mut s = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => s.push_str(t),
            Piece::Bos => s.push_str(tok.bos.as_ref().map(|b| b.0.as_str()).unwrap_or("")),
            Piece::Eos => s.push_str(tok.eos.as_ref().map(|e| e.0.as_str()).unwrap_or("")),
        }
    }
    s
}

/// LLaMA-Factory's `_convert_elements_to_ids`: each text piece is tokenised on its own.
fn pieces_ids(tok: &TokenizerBundle, pieces: &[Piece]) -> Result<Vec<u32>, DataError> {
    let mut ids = Vec::new();
    for p in pieces {
        match p {
            Piece::Text(t) if !t.is_empty() => ids.extend(tok.encode(t)?),
            Piece::Text(_) => {}
            Piece::Bos => ids.extend(tok.bos.as_ref().map(|b| b.1)),
            Piece::Eos => ids.extend(tok.eos.as_ref().map(|e| e.1)),
        }
    }
    Ok(ids)
}

/// Byte spans of each assistant response in the rendered conversation, and that text.
fn auto_spans(
    j: &JinjaTemplate,
    tok: &TokenizerBundle,
    system: Option<&str>,
    turns: &[(String, String)],
) -> Result<(String, Vec<(usize, usize)>), DataError> {
    let all = messages(system, turns, None);
    let offset = all.len() - 2 * turns.len();
    let v = vars(tok);
    let not_prefix = |what: &str| {
        DataError::template(
            "auto",
            format!(
                "the model's chat_template is not prefix-consistent ({what}), so the assistant tokens cannot be located; set `template` to a named template"
            ),
        )
    };
    let mut spans = Vec::with_capacity(turns.len());
    let mut previous = String::new();
    for k in 0..turns.len() {
        let prompt = j.render(&all[..offset + 2 * k + 1], true, &v)?;
        let full = j.render(&all[..offset + 2 * k + 2], false, &v)?;
        if !prompt.starts_with(&previous) {
            return Err(not_prefix(&format!(
                "turn {} does not extend the conversation before it",
                k + 1
            )));
        }
        if !full.starts_with(&prompt) {
            return Err(not_prefix(&format!(
                "the answer of turn {} does not extend its generation prompt",
                k + 1
            )));
        }
        spans.push((prompt.len(), full.len()));
        previous = full;
    }
    Ok((previous, spans))
}

fn auto_pairs(
    j: &JinjaTemplate,
    tok: &TokenizerBundle,
    system: Option<&str>,
    turns: &[(String, String)],
) -> Result<Pairs, DataError> {
    let (text, spans) = auto_spans(j, tok, system, turns)?;
    let (ids, offsets) = tok.encode_with_offsets(&text)?;
    // Token i belongs to response k when its first byte lies in span k; otherwise to the prompt of
    // the next response.
    let mut pairs: Pairs = vec![(Vec::new(), Vec::new()); spans.len()];
    let mut k = 0;
    for (id, (start, _)) in ids.into_iter().zip(offsets) {
        while k + 1 < spans.len() && start >= spans[k].1 {
            k += 1;
        }
        if start >= spans[k].0 && (start < spans[k].1 || k + 1 == spans.len()) {
            pairs[k].1.push(id);
        } else {
            pairs[k].0.push(id);
        }
    }
    Ok(pairs)
}

/// Special tokens the template writes after an assistant message (e.g. `<|eot_id|>`).
fn auto_turn_end_specials(j: &JinjaTemplate, tok: &TokenizerBundle) -> Vec<u32> {
    const PROBE: &str = "lfprobe";
    let turns = [("Hi".to_string(), PROBE.to_string())];
    let Ok((text, spans)) = auto_spans(j, tok, None, &turns) else {
        return Vec::new();
    };
    let (start, end) = spans[0];
    let answer = &text[start..end];
    let Some(pos) = answer.find(PROBE) else {
        return Vec::new();
    };
    let suffix = &answer[pos + PROBE.len()..];
    let specials = tok.tokenizer.get_added_tokens_decoder();
    tok.encode(suffix)
        .unwrap_or_default()
        .into_iter()
        .filter(|id| specials.get(id).is_some_and(|t| t.special))
        .collect()
}
