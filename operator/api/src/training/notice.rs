//! Notices: what parsing accepted but a user should hear about.

use std::fmt;

/// A one-line remark about an accepted option: it changes nothing for lf-trainer, or lf-trainer
/// already does (or does more than) what it asks, or a DeepSpeed key was mapped or ignored.
/// Parsing returns them (see [`super::Parsed`]); the trainer and the operator log them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The key it is about, as the user wrote it (`enable_liger_kernel`, `deepspeed`).
    pub key: String,
    /// What lf-trainer does instead, in one sentence.
    pub message: String,
}

impl Notice {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Notice {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Whether this notice is about `key` or one of its sub-keys (`deepspeed` covers
    /// `deepspeed.zero_optimization`).
    pub fn concerns(&self, key: &str) -> bool {
        self.key == key
            || self
                .key
                .strip_prefix(key)
                .is_some_and(|rest| rest.starts_with('.'))
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}
