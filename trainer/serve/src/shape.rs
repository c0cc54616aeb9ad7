//! Response bodies in OpenAI's shapes, as pure functions of what was generated.

use serde_json::{json, Value};

use crate::api::Usage;
use crate::scheduler::FinishReason;

/// Which API a response belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Api {
    Chat,
    Completion,
}

/// The fields every response of one request shares.
#[derive(Debug, Clone)]
pub struct Head {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Api {
    /// The whole answer.
    pub fn response(self, h: &Head, text: &str, finish: FinishReason, usage: Usage) -> Value {
        let choice = match self {
            Api::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish.as_str(),
            }),
            Api::Completion => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish.as_str(),
            }),
        };
        json!({
            "id": h.id,
            "object": match self { Api::Chat => "chat.completion", Api::Completion => "text_completion" },
            "created": h.created,
            "model": h.model,
            "choices": [choice],
            "usage": usage,
        })
    }

    fn chunk(self, h: &Head, choices: Value) -> Value {
        json!({
            "id": h.id,
            "object": match self { Api::Chat => "chat.completion.chunk", Api::Completion => "text_completion" },
            "created": h.created,
            "model": h.model,
            "choices": choices,
        })
    }

    /// The chunk that opens a stream (chat: the assistant role, no content yet).
    pub fn opening(self, h: &Head) -> Option<Value> {
        match self {
            Api::Chat => Some(self.chunk(
                h,
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
            )),
            Api::Completion => None,
        }
    }

    /// A chunk of text; the last one carries the finish reason (chat: with an empty delta when it
    /// has no text).
    pub fn delta(self, h: &Head, text: &str, finish: Option<FinishReason>) -> Value {
        let finish = finish.map(FinishReason::as_str);
        let choice = match self {
            Api::Chat if text.is_empty() => {
                json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish})
            }
            Api::Chat => {
                json!({"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": finish})
            }
            Api::Completion => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
        };
        self.chunk(h, json!([choice]))
    }

    /// The closing usage chunk (`stream_options.include_usage`): no choices.
    pub fn usage(self, h: &Head, usage: Usage) -> Value {
        let mut v = self.chunk(h, json!([]));
        v["usage"] = json!(usage);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let h = Head {
            id: "chatcmpl-1".into(),
            created: 7,
            model: "m".into(),
        };
        let u = Usage::new(3, 2);
        let r = Api::Chat.response(&h, "hi", FinishReason::Length, u);
        assert_eq!(r["object"], "chat.completion");
        assert_eq!(
            r["choices"][0]["message"],
            json!({"role": "assistant", "content": "hi"})
        );
        assert_eq!(r["choices"][0]["finish_reason"], "length");
        assert_eq!(
            r["usage"],
            json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
        );
        let r = Api::Completion.response(&h, "hi", FinishReason::Stop, u);
        assert_eq!(
            (r["object"].as_str(), r["choices"][0]["text"].as_str()),
            (Some("text_completion"), Some("hi"))
        );
        assert_eq!(
            Api::Chat.opening(&h).unwrap()["choices"][0]["delta"]["role"],
            "assistant"
        );
        assert!(Api::Completion.opening(&h).is_none());
        let d = Api::Chat.delta(&h, "x", None);
        assert_eq!(
            (d["object"].as_str(), &d["choices"][0]["delta"]),
            (Some("chat.completion.chunk"), &json!({"content": "x"}))
        );
        assert!(d["choices"][0]["finish_reason"].is_null());
        let last = Api::Chat.delta(&h, "", Some(FinishReason::Stop));
        assert_eq!(
            (
                &last["choices"][0]["delta"],
                last["choices"][0]["finish_reason"].as_str()
            ),
            (&json!({}), Some("stop"))
        );
        let usage = Api::Chat.usage(&h, u);
        assert_eq!(
            (
                usage["choices"].as_array().map(Vec::len),
                usage["usage"]["total_tokens"].as_u64()
            ),
            (Some(0), Some(5))
        );
    }
}
