//! LLaMA-Factory's named templates (`data/template.py`), reproduced as data: each message is a
//! list of slots (text with `{{content}}`, or the BOS/EOS token), and each text slot is tokenised on
//! its own, as LLaMA-Factory's `_convert_elements_to_ids` does.

/// One slot of a message format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Literal text; `{{content}}` is replaced by the message content.
    Text(&'static str),
    /// The tokenizer's BOS token (skipped when it has none).
    Bos,
    /// The tokenizer's EOS token (skipped when it has none).
    Eos,
}

/// A LLaMA-Factory template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedTemplate {
    pub name: &'static str,
    /// Emitted once, before the first message.
    pub prefix: &'static [Slot],
    pub system: &'static [Slot],
    pub user: &'static [Slot],
    pub assistant: &'static [Slot],
    /// Used when neither the record nor `default_system` gives a system prompt.
    pub default_system: Option<&'static str>,
    /// `Llama2Template`: the formatted system text is prepended to the first user message's content
    /// instead of being a slot list of its own.
    pub system_in_user: bool,
    /// Extra tokens that end generation besides EOS.
    pub stop_words: &'static [&'static str],
    /// `ReasoningTemplate` (thinking on): an empty thought, tokenised on its own, opens every
    /// response of a training conversation that has no `<think>` of its own, and is trained with
    /// it (generation prompts carry none).
    pub empty_thought: Option<&'static str>,
}

use Slot::{Bos, Eos, Text};

const CONTENT: &[Slot] = &[Text("{{content}}")];
const CONTENT_EOS: &[Slot] = &[Text("{{content}}"), Eos];

/// Every named template (the names `lf_api::training::TEMPLATES` lists besides `auto`).
pub const NAMED: &[NamedTemplate] = &[
    NamedTemplate {
        name: "default",
        prefix: &[],
        system: &[Text("System: {{content}}"), Eos, Text("\n")],
        user: &[Text("Human: {{content}}"), Eos, Text("\nAssistant:")],
        assistant: &[Text("{{content}}"), Eos, Text("\n")],
        default_system: None,
        system_in_user: false,
        stop_words: &[],
        empty_thought: None,
    },
    NamedTemplate {
        name: "alpaca",
        prefix: &[],
        system: CONTENT,
        user: &[Text("### Instruction:\n{{content}}\n\n### Response:\n")],
        assistant: &[Text("{{content}}"), Eos, Text("\n\n")],
        default_system: Some("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"),
        system_in_user: false,
        stop_words: &[],
        empty_thought: None,
    },
    NamedTemplate {
        name: "empty",
        prefix: &[],
        system: CONTENT,
        user: CONTENT,
        assistant: CONTENT,
        default_system: None,
        system_in_user: false,
        stop_words: &[],
        empty_thought: None,
    },
    NamedTemplate {
        name: "llama2",
        prefix: &[],
        system: &[Text("<<SYS>>\n{{content}}\n<</SYS>>\n\n")],
        user: &[Bos, Text("[INST] {{content}} [/INST]")],
        assistant: CONTENT_EOS,
        default_system: None,
        system_in_user: true,
        stop_words: &[],
        empty_thought: None,
    },
    NamedTemplate {
        name: "llama3",
        prefix: &[Bos],
        system: &[Text("<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>")],
        user: &[Text("<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")],
        assistant: &[Text("{{content}}<|eot_id|>")],
        default_system: None,
        system_in_user: false,
        stop_words: &["<|eot_id|>", "<|eom_id|>"],
        empty_thought: None,
    },
    NamedTemplate {
        name: "mistral",
        prefix: &[Bos],
        system: &[Text("{{content}}\n\n")],
        user: &[Text("[INST] {{content}}[/INST]")],
        assistant: &[Text(" {{content}}"), Eos],
        default_system: None,
        system_in_user: true,
        stop_words: &[],
        empty_thought: None,
    },
    NamedTemplate {
        name: "qwen",
        prefix: &[],
        system: &[Text("<|im_start|>system\n{{content}}<|im_end|>\n")],
        user: &[Text("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n")],
        assistant: &[Text("{{content}}<|im_end|>\n")],
        default_system: Some("You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
        system_in_user: false,
        stop_words: &["<|im_end|>"],
        empty_thought: None,
    },
    // LLaMA-Factory's `gemma` (a Llama2Template: the system text opens the first user turn),
    // which renders as Gemma 3's own chat template does.
    NamedTemplate {
        name: "gemma",
        prefix: &[Bos],
        system: &[Text("{{content}}\n\n")],
        user: &[Text("<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n")],
        assistant: &[Text("{{content}}<end_of_turn>\n")],
        default_system: None,
        system_in_user: true,
        stop_words: &["<end_of_turn>"],
        empty_thought: None,
    },
    // LLaMA-Factory's `qwen3`: ChatML without a default system prompt, as a reasoning template.
    // Qwen3's own template writes the empty thought on the last response only, so the two agree
    // on single-turn conversations.
    NamedTemplate {
        name: "qwen3",
        prefix: &[],
        system: &[Text("<|im_start|>system\n{{content}}<|im_end|>\n")],
        user: &[Text("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n")],
        assistant: &[Text("{{content}}<|im_end|>\n")],
        default_system: None,
        system_in_user: false,
        stop_words: &["<|im_end|>"],
        empty_thought: Some("<think>\n\n</think>\n\n"),
    },
    // LLaMA-Factory's `phi` (Phi-3, Phi-3.5): renders as their own chat template does, except
    // that the model's template also ends a whole conversation (no generation prompt) with EOS.
    NamedTemplate {
        name: "phi",
        prefix: &[],
        system: &[Text("<|system|>\n{{content}}<|end|>\n")],
        user: &[Text("<|user|>\n{{content}}<|end|>\n<|assistant|>\n")],
        assistant: &[Text("{{content}}<|end|>\n")],
        default_system: None,
        system_in_user: false,
        stop_words: &["<|end|>"],
        empty_thought: None,
    },
    // LLaMA-Factory's `phi4` (Phi-4), which renders as Phi-4's own chat template does.
    NamedTemplate {
        name: "phi4",
        prefix: &[],
        system: &[Text("<|im_start|>system<|im_sep|>{{content}}<|im_end|>")],
        user: &[Text(
            "<|im_start|>user<|im_sep|>{{content}}<|im_end|><|im_start|>assistant<|im_sep|>",
        )],
        assistant: &[Text("{{content}}<|im_end|>")],
        default_system: None,
        system_in_user: false,
        stop_words: &["<|im_end|>"],
        empty_thought: None,
    },
    NamedTemplate {
        name: "chatml",
        prefix: &[],
        system: &[Text("<|im_start|>system\n{{content}}<|im_end|>\n")],
        user: &[Text("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n")],
        assistant: &[Text("{{content}}<|im_end|>\n")],
        default_system: None,
        system_in_user: false,
        stop_words: &["<|im_end|>"],
        empty_thought: None,
    },
];

/// A formatted piece of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Bos,
    Eos,
}

/// Looks a template up by name.
pub fn find(name: &str) -> Option<&'static NamedTemplate> {
    NAMED.iter().find(|t| t.name == name)
}

fn apply(slots: &[Slot], content: &str, out: &mut Vec<Piece>) {
    for slot in slots {
        match slot {
            Text(t) => out.push(Piece::Text(t.replace("{{content}}", content))),
            Bos => out.push(Piece::Bos),
            Eos => out.push(Piece::Eos),
        }
    }
}

impl NamedTemplate {
    /// The pieces of each message (`messages` alternate user, assistant, ...), as LLaMA-Factory's
    /// `Template._encode` / `Llama2Template._encode` build them. `system` falls back to the
    /// template's default system prompt.
    pub fn format_messages(&self, system: Option<&str>, messages: &[&str]) -> Vec<Vec<Piece>> {
        let system = system
            .filter(|s| !s.is_empty())
            .or(self.default_system)
            .unwrap_or("");
        messages
            .iter()
            .enumerate()
            .map(|(i, content)| {
                let mut pieces = Vec::new();
                let mut system_text = String::new();
                if i == 0 {
                    apply(self.prefix, "", &mut pieces);
                    if !system.is_empty() {
                        if self.system_in_user {
                            let mut sys = Vec::new();
                            apply(self.system, system, &mut sys);
                            if let Some(Piece::Text(t)) = sys.first() {
                                system_text = t.clone();
                            }
                        } else {
                            apply(self.system, system, &mut pieces);
                        }
                    }
                }
                if i % 2 == 0 {
                    apply(self.user, &format!("{system_text}{content}"), &mut pieces);
                } else {
                    // A generation prompt (ending in a user message) keeps its history as
                    // written, as LLaMA-Factory's `encode_oneturn` does.
                    let conversation = messages.len().is_multiple_of(2);
                    if let Some(thought) = self
                        .empty_thought
                        .filter(|_| conversation && !content.contains("<think>"))
                    {
                        pieces.push(Piece::Text(thought.to_string()));
                    }
                    apply(self.assistant, content, &mut pieces);
                }
                pieces
            })
            .collect()
    }
}
