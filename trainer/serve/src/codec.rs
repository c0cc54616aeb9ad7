//! What the server needs from the tokenizer and chat template, implemented by the trainer with
//! the same tokenizer and template as `lf-trainer chat`.

/// A chat prompt: the system message, earlier (user, assistant) turns and the new user message,
/// as the chat template takes them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatPrompt {
    pub system: Option<String>,
    pub history: Vec<(String, String)>,
    pub user: String,
}

/// Text to token ids and back. Errors are messages for the client (its input did not encode).
pub trait Codec: Send + Sync + 'static {
    /// The ids of `prompt` through the chat template, ending with the assistant header.
    fn chat_prompt(&self, prompt: &ChatPrompt) -> Result<Vec<u32>, String>;
    /// The ids of raw text, with the special tokens the tokenizer adds to a text (BOS).
    fn text_prompt(&self, text: &str) -> Result<Vec<u32>, String>;
    /// The text of generated ids (special tokens skipped).
    fn decode(&self, ids: &[u32]) -> Result<String, String>;
}
