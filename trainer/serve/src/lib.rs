//! `lf-trainer serve`'s HTTP layer: OpenAI-compatible `POST /v1/chat/completions`,
//! `POST /v1/completions` and `GET /v1/models`, the guide's `POST /generate` and `GET /health`,
//! and Prometheus `GET /metrics`, over one model thread that decodes with continuous batching.
//!
//! # How requests run
//! Handlers check a request (OpenAI-style 400s: malformed JSON, unknown model, `max_tokens`
//! beyond the context, empty or misordered messages, `n` other than 1), encode its prompt
//! ([`Codec`]: the trainer's tokenizer and chat template) and put a [`scheduler::Job`] in a
//! bounded queue; a full queue is answered at once with 429 and `Retry-After`, a model that
//! failed to load with 503. The model thread ([`scheduler::run`]) owns the [`Engine`] (tch
//! tensors are `Send`, not `Sync`, so they never leave it). At every decoding step it admits
//! waiting jobs up to `max_running` (and, with `max_kv_tokens`, while the prompt + `max_tokens`
//! positions they reserve fit the budget; the queue's head waits otherwise), then advances every running sequence by one forward pass —
//! a chunk of its prompt (prefill in chunks, so a long prompt does not stall the others) or one
//! token — and a sequence leaves as soon as it ends (stop token, `max_tokens`), fails, or its
//! client is gone: a client that disconnects drops its event channel, and the sequence (with its
//! KV cache) is freed at the next step. Each sequence has its own KV cache, so sequences never
//! see each other's tokens; greedy answers are the ones `CausalLm::generate` gives alone.
//!
//! # What is not batched yet
//! A decoding step runs one forward pass *per running sequence*, in turn, not one forward over
//! all of them: throughput under concurrency is that of sequential decoding, interleaved. A truly
//! batched forward still needs, in lf-model:
//! - a batched decode entry point taking `[B, 1]` tokens (and ragged prompt chunks) with
//!   per-row positions, so RoPE is applied at each row's own offset;
//! - a KV cache per row gathered into one padded `[B, kv_heads, T_max, D]` tensor per layer (or a
//!   paged cache with a block table), with an attention mask hiding each row's padding, and rows
//!   joining and leaving between steps without copying the others' caches;
//! - LoRA applied per row: base projection once for the batch, then for each adapter group of
//!   rows `x_g · A_gᵀ · B_gᵀ · scaling_g` scattered back (the segmented-gather LoRA of
//!   Punica/S-LoRA), so different adapters share one forward;
//! - per-row sampling from the `[B, vocab]` logits (the sampler is already per sequence).
//!
//! Until then each adapter is its own loaded model (base weights loaded once per adapter),
//! which is what the trainer's engine does.

pub mod api;
pub mod codec;
pub mod error;
pub mod generation;
pub mod metrics;
pub mod params;
pub mod prompt;
pub mod routes;
pub mod scheduler;
pub mod server;
pub mod shape;
pub mod text;

pub use codec::{ChatPrompt, Codec};
pub use error::{ApiError, ServeError};
pub use params::Sampling;
pub use scheduler::Engine;
pub use server::{serve, Options, Setup};
