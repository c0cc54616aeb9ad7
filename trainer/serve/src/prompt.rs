//! OpenAI `messages` to the chat template's (system, history, user) form, and `prompt` fields to
//! text: pure checks, each failure a 400 naming the field.

use crate::api::{Content, Message, PromptField};
use crate::codec::ChatPrompt;
use crate::error::ApiError;

fn content_text(m: &Message, i: usize) -> Result<String, ApiError> {
    let bad =
        |what: &str| ApiError::invalid(Some("messages"), None, format!("messages[{i}]: {what}"));
    match &m.content {
        None => Err(bad("content is required")),
        Some(Content::Text(t)) => Ok(t.clone()),
        Some(Content::Parts(parts)) => parts
            .iter()
            .map(|p| match (p.kind.as_str(), &p.text) {
                ("text", Some(t)) => Ok(t.as_str()),
                (kind, _) => Err(bad(&format!(
                    "only text content parts are supported, not `{kind}`"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|t| t.concat()),
    }
}

/// `messages` as a chat prompt: an optional leading `system` (or `developer`) message, then
/// `user` and `assistant` messages alternating, ending with `user`.
pub fn chat_prompt(messages: &[Message]) -> Result<ChatPrompt, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            None,
            "messages must hold at least one message",
        ));
    }
    let mut prompt = ChatPrompt::default();
    let mut pending_user: Option<String> = None;
    for (i, m) in messages.iter().enumerate() {
        let text = content_text(m, i)?;
        let order = |expected: &str| {
            ApiError::invalid(
                Some("messages"),
                None,
                format!(
                    "messages[{i}] has role `{}` where `{expected}` was expected (a system message first, then user and assistant alternating, ending with user)",
                    m.role
                ),
            )
        };
        match m.role.as_str() {
            "system" | "developer" if i == 0 => prompt.system = Some(text),
            "user" if pending_user.is_none() => pending_user = Some(text),
            "assistant" => match pending_user.take() {
                Some(user) => prompt.history.push((user, text)),
                None => return Err(order("user")),
            },
            "user" => return Err(order("assistant")),
            "system" | "developer" => return Err(order("user or assistant")),
            other => {
                return Err(ApiError::invalid(
                    Some("messages"),
                    None,
                    format!("messages[{i}]: unknown role `{other}`"),
                ))
            }
        }
    }
    prompt.user = pending_user.ok_or_else(|| {
        ApiError::invalid(
            Some("messages"),
            None,
            "the last message must be from the user",
        )
    })?;
    Ok(prompt)
}

/// A completion's `prompt`: a string or a list of exactly one.
pub fn completion_prompt(prompt: &PromptField) -> Result<&str, ApiError> {
    match prompt {
        PromptField::One(p) => Ok(p),
        PromptField::Many(ps) if ps.len() == 1 => Ok(&ps[0]),
        PromptField::Many(_) => Err(ApiError::invalid(
            Some("prompt"),
            None,
            "prompt must be one string (batches of prompts are not supported; send one request each)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(v: serde_json::Value) -> Vec<Message> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn conversations() {
        let ok = chat_prompt(&msgs(serde_json::json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": [{"type": "text", "text": "again"}, {"type": "text", "text": "!"}]}
        ])))
        .unwrap();
        assert_eq!(
            ok,
            ChatPrompt {
                system: Some("be brief".into()),
                history: vec![("hi".into(), "hello".into())],
                user: "again!".into()
            }
        );
        let cases = [
            (serde_json::json!([]), "at least one"),
            (
                serde_json::json!([{"role": "assistant", "content": "x"}]),
                "messages[0] has role `assistant`",
            ),
            (
                serde_json::json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
                "messages[1] has role `user`",
            ),
            (
                serde_json::json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
                "last message",
            ),
            (
                serde_json::json!([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]),
                "messages[1] has role `system`",
            ),
            (
                serde_json::json!([{"role": "tool", "content": "a"}]),
                "unknown role `tool`",
            ),
            (serde_json::json!([{"role": "user"}]), "content is required"),
            (
                serde_json::json!([{"role": "user", "content": [{"type": "image_url"}]}]),
                "not `image_url`",
            ),
        ];
        for (v, needle) in cases {
            let e = chat_prompt(&msgs(v.clone())).unwrap_err();
            assert!(e.message.contains(needle), "{v}: {}", e.message);
            assert_eq!(e.param, Some("messages"));
        }
    }

    #[test]
    fn prompts() {
        assert_eq!(
            completion_prompt(&PromptField::One("a".into())).unwrap(),
            "a"
        );
        assert_eq!(
            completion_prompt(&PromptField::Many(vec!["b".into()])).unwrap(),
            "b"
        );
        assert!(completion_prompt(&PromptField::Many(vec!["a".into(), "b".into()])).is_err());
        assert!(completion_prompt(&PromptField::Many(vec![])).is_err());
    }
}
