//! Autoregressive generation with a KV cache: greedy, or sampling with transformers' processors
//! in transformers' order (repetition penalty, temperature, top-k, top-p).

use tch::{Kind, Tensor};

use crate::causal_lm::CausalLm;
use crate::llama::KvCache;
use crate::residency::AlwaysResident;
use crate::{GenerationParams, ModelError};

/// A small deterministic generator (splitmix64) so sampling is reproducible across devices.
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One sequence being decoded, step by step: its KV cache, its sampler and its tokens. Several of
/// them can advance in turn on one model (a server interleaves its requests this way); each step
/// of each one computes exactly what [`CausalLm::generate`] computes, so the tokens are the same.
pub struct Decoding {
    params: GenerationParams,
    cache: KvCache,
    rng: SplitMix,
    /// The prompt and every token picked so far.
    seen: Vec<i64>,
    /// How many of `seen` the cache holds.
    fed: usize,
    /// Most prompt tokens fed in one step (prefill in chunks; at least 1).
    chunk: usize,
    /// Tokens picked so far.
    picked: usize,
}

impl Decoding {
    /// Tokens picked so far (the prompt excluded).
    pub fn generated(&self) -> usize {
        self.picked
    }

    /// Positions the KV cache holds.
    pub fn cached(&self) -> usize {
        self.fed
    }
}

impl CausalLm {
    /// Starts decoding `prompt` (checked: non-empty, inside the vocabulary, a positive
    /// temperature when sampling). With `prefill_chunk`, each [`CausalLm::decode_step`] feeds at
    /// most that many prompt tokens, so a long prompt does not hold up sequences decoding beside
    /// it; `None` feeds the prompt in one pass, as [`CausalLm::generate`] does.
    pub fn start_decoding(
        &self,
        prompt: &[i64],
        params: &GenerationParams,
        prefill_chunk: Option<usize>,
    ) -> Result<Decoding, ModelError> {
        if prompt.is_empty() {
            return Err(ModelError::Invalid(
                "generate needs a non-empty prompt".into(),
            ));
        }
        let vocab = self.arch.vocab_size as i64;
        if let Some(bad) = prompt.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(ModelError::Invalid(format!(
                "prompt token {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        if params.do_sample && params.temperature <= 0.0 {
            return Err(ModelError::Invalid(
                "temperature must be > 0 when sampling (or set do_sample: false)".into(),
            ));
        }
        Ok(Decoding {
            params: params.clone(),
            cache: KvCache::default(),
            rng: SplitMix(params.seed),
            seen: prompt.to_vec(),
            fed: 0,
            chunk: prefill_chunk.unwrap_or(usize::MAX).max(1),
            picked: 0,
        })
    }

    /// Runs one forward pass of `state`: the next chunk of its prompt, or its last picked token.
    /// Returns the token picked after it, or `None` while the prompt is not fully fed. The token
    /// is part of the sequence from then on (stop tokens too: the caller decides to stop).
    pub fn decode_step(&self, state: &mut Decoding) -> Result<Option<i64>, ModelError> {
        let _guard = tch::no_grad_guard();
        let device = self.opts.device;
        let end = state.seen.len().min(state.fed.saturating_add(state.chunk));
        let mut start = state.fed;
        // LongRoPE switches to its long factors once the sequence outgrows the original
        // context: keys cached with the short ones are recomputed, as transformers' Phi-3
        // `prepare_inputs_for_generation` drops its cache there.
        let cached = state.cache.len();
        if cached > 0 && self.model.rotary.is_long(end as i64) && !self.model.rotary.is_long(cached)
        {
            state.cache = KvCache::default();
            start = 0;
        }
        let input = Tensor::from_slice(&state.seen[start..end])
            .to_device(device)
            .unsqueeze(0);
        let Ok(hidden) = self.model.hidden(
            &input,
            Some(&mut state.cache),
            self.backend,
            false,
            &AlwaysResident,
        );
        state.fed = end;
        if end < state.seen.len() {
            return Ok(None);
        }
        let last = hidden.select(1, -1);
        let logits = self
            .model
            .head(&last)
            .to_kind(Kind::Float)
            .squeeze_dim(0)
            .to_device(tch::Device::Cpu);
        let mut scores =
            Vec::<f32>::try_from(&logits).map_err(ModelError::torch("reading logits"))?;
        let next = pick(&mut scores, &state.seen, &state.params, &mut state.rng);
        state.seen.push(next);
        state.picked += 1;
        Ok(Some(next))
    }

    /// Generates up to `params.max_new_tokens` tokens after `prompt`, calling `on_token` with each
    /// new token as it is produced. Stops after a token in `stop_ids`, which is neither passed to
    /// `on_token` nor included in the returned tokens. The prompt is processed in one pass that
    /// fills the KV cache; every later step feeds one token.
    pub fn generate(
        &self,
        prompt: &[i64],
        params: &GenerationParams,
        stop_ids: &[i64],
        mut on_token: impl FnMut(i64),
    ) -> Result<Vec<i64>, ModelError> {
        let mut state = self.start_decoding(prompt, params, None)?;
        let mut out = Vec::new();
        while out.len() < params.max_new_tokens {
            let Some(next) = self.decode_step(&mut state)? else {
                continue;
            };
            if stop_ids.contains(&next) {
                break;
            }
            on_token(next);
            out.push(next);
        }
        Ok(out)
    }
}

/// Chooses the next token from `scores` (modified in place).
fn pick(scores: &mut [f32], seen: &[i64], p: &GenerationParams, rng: &mut SplitMix) -> i64 {
    if p.repetition_penalty != 1.0 {
        let mut done = std::collections::HashSet::new();
        for &t in seen {
            if done.insert(t) {
                let s = &mut scores[t as usize];
                *s = if *s < 0.0 {
                    *s * p.repetition_penalty as f32
                } else {
                    *s / p.repetition_penalty as f32
                };
            }
        }
    }
    if !p.do_sample {
        return argmax(scores);
    }
    for s in scores.iter_mut() {
        *s /= p.temperature as f32;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    if p.top_k > 0 {
        order.truncate(p.top_k);
    }
    let max = scores[order[0]];
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((scores[i] - max) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|q| *q /= total);
    if p.top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (always at least one token).
        let mut mass = 0.0;
        let mut keep = 0;
        for q in &probs {
            keep += 1;
            mass += q;
            if mass >= p.top_p {
                break;
            }
        }
        order.truncate(keep);
        probs.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
    }
    let u = rng.next_f64();
    let mut acc = 0.0;
    for (i, q) in probs.iter().enumerate() {
        acc += q;
        if u < acc {
            return order[i] as i64;
        }
    }
    order[order.len() - 1] as i64
}

fn argmax(scores: &[f32]) -> i64 {
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if *s > scores[best] {
            best = i;
        }
    }
    best as i64
}
