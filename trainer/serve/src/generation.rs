//! The request side of one sequence: events from the model thread turned into text pieces
//! (stop strings applied). Dropping it closes the channel, which frees the sequence on the
//! model thread at its next step — how a client that leaves, or a stop string, ends decoding.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::codec::Codec;
use crate::error::ApiError;
use crate::scheduler::{Event, FinishReason};
use crate::text::TextStream;

/// Text released by one event; `finish` is set on the last piece.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub text: String,
    pub finish: Option<FinishReason>,
}

pub struct Generation {
    events: UnboundedReceiver<Event>,
    text: TextStream,
    codec: Arc<dyn Codec>,
    done: bool,
    /// Told to the model thread when a stop string ends the answer (see `Job::answered`).
    answered: Arc<AtomicBool>,
}

impl Generation {
    pub fn new(
        events: UnboundedReceiver<Event>,
        stops: Vec<String>,
        codec: Arc<dyn Codec>,
        answered: Arc<AtomicBool>,
    ) -> Self {
        Generation {
            events,
            text: TextStream::new(stops),
            codec,
            done: false,
            answered,
        }
    }

    /// The next piece of text; `None` after the last one.
    pub async fn next(&mut self) -> Option<Result<Chunk, ApiError>> {
        if self.done {
            return None;
        }
        let event = self.events.recv().await;
        let (token, finish) = match event {
            Some(Event::Token(t)) => (Some(t), None),
            Some(Event::Finished(reason)) => (None, Some(reason)),
            Some(Event::Failed(e)) => {
                self.done = true;
                return Some(Err(ApiError::internal(format!("generation failed: {e}"))));
            }
            None => {
                self.done = true;
                return Some(Err(ApiError::unavailable(
                    "the model thread stopped before this request finished",
                )));
            }
        };
        let piece = match self.text.push(self.codec.as_ref(), token) {
            Ok(p) => p,
            Err(e) => {
                self.done = true;
                return Some(Err(ApiError::internal(format!("decoding failed: {e}"))));
            }
        };
        let finish = if piece.stopped {
            Some(FinishReason::Stop)
        } else {
            finish
        };
        if finish.is_some() {
            self.done = true;
            if piece.stopped {
                self.answered.store(true, Ordering::Release);
            }
            // Stop listening: a stop string may end the answer while the model still runs it.
            self.events.close();
        }
        Some(Ok(Chunk {
            text: piece.text,
            finish,
        }))
    }

    /// The whole answer (non-streaming requests).
    pub async fn collect(&mut self) -> Result<(String, FinishReason), ApiError> {
        let mut text = String::new();
        while let Some(chunk) = self.next().await {
            let chunk = chunk?;
            text.push_str(&chunk.text);
            if let Some(reason) = chunk.finish {
                return Ok((text, reason));
            }
        }
        Err(ApiError::internal(
            "the answer ended without a finish reason",
        ))
    }

    /// Generated tokens received so far (a stop token is not counted).
    pub fn completion_tokens(&self) -> usize {
        self.text.tokens()
    }
}
