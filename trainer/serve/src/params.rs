//! Decoding parameters of a request: the server's defaults (the config's `chat` keys) overridden
//! by the request's fields, checked against the model's context. Pure functions.

use crate::api::{GenerateRequest, SamplingFields, Stop};
use crate::error::ApiError;

/// How one sequence is decoded (the model side converts it to its own parameters).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub max_new_tokens: usize,
    pub do_sample: bool,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub repetition_penalty: f64,
    pub seed: u64,
}

/// A request's decoding: its sampling and its stop strings.
#[derive(Debug, Clone, PartialEq)]
pub struct Decode {
    pub sampling: Sampling,
    pub stop: Vec<String>,
}

/// OpenAI allows up to 4 stop sequences.
const MAX_STOPS: usize = 4;

fn bad(param: &'static str, message: String) -> ApiError {
    ApiError::invalid(Some(param), None, message)
}

/// The number of new tokens: `requested`, else the default capped by what the context leaves.
/// A prompt that fills the context, or a request beyond it, is refused.
pub fn new_tokens(
    requested: Option<i64>,
    param: &'static str,
    default: usize,
    prompt_len: usize,
    context_len: usize,
) -> Result<usize, ApiError> {
    let room = context_len.saturating_sub(prompt_len);
    let exceeded = |asked: String| {
        ApiError::invalid(
            Some(param),
            Some("context_length_exceeded"),
            format!(
                "this model's maximum context length is {context_len} tokens; the prompt has {prompt_len} and {asked} were requested for the completion"
            ),
        )
    };
    match requested {
        Some(n) if n < 1 => Err(bad(param, format!("{param} must be at least 1, not {n}"))),
        Some(n) if n as u64 > room as u64 => Err(exceeded(n.to_string())),
        Some(n) => Ok(n as usize),
        None if room == 0 => Err(exceeded("some".into())),
        None => Ok(default.min(room)),
    }
}

fn temperature(t: Option<f64>, defaults: &Sampling) -> Result<(bool, f64), ApiError> {
    match t {
        None => Ok((defaults.do_sample, defaults.temperature)),
        Some(t) if !(0.0..=2.0).contains(&t) => Err(bad(
            "temperature",
            format!("temperature must be between 0 and 2, not {t}"),
        )),
        // OpenAI's temperature 0 is greedy decoding.
        Some(0.0) => Ok((false, defaults.temperature)),
        Some(t) => Ok((true, t)),
    }
}

fn top_p(p: Option<f64>, default: f64) -> Result<f64, ApiError> {
    match p {
        None => Ok(default),
        Some(p) if p > 0.0 && p <= 1.0 => Ok(p),
        Some(p) => Err(bad("top_p", format!("top_p must be in (0, 1], not {p}"))),
    }
}

/// Chat and text completions: `max_tokens` (or `max_completion_tokens`), `temperature`, `top_p`,
/// `stop`, `seed`, and `n` which must be 1.
pub fn openai(
    f: &SamplingFields,
    defaults: &Sampling,
    prompt_len: usize,
    context_len: usize,
) -> Result<Decode, ApiError> {
    if let Some(n) = f.n.filter(|&n| n != 1) {
        return Err(bad(
            "n",
            format!("only n = 1 is supported, not {n} (send one request per completion)"),
        ));
    }
    let (requested, param) = match (f.max_completion_tokens, f.max_tokens) {
        (Some(m), _) => (Some(m), "max_completion_tokens"),
        (None, m) => (m, "max_tokens"),
    };
    let max_new_tokens = new_tokens(
        requested,
        param,
        defaults.max_new_tokens,
        prompt_len,
        context_len,
    )?;
    let (do_sample, temperature) = temperature(f.temperature, defaults)?;
    let stop = match &f.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOPS || stop.iter().any(String::is_empty) {
        return Err(bad(
            "stop",
            format!("stop takes at most {MAX_STOPS} non-empty strings"),
        ));
    }
    Ok(Decode {
        sampling: Sampling {
            max_new_tokens,
            do_sample,
            temperature,
            top_p: top_p(f.top_p, defaults.top_p)?,
            seed: f.seed.map(|s| s as u64).unwrap_or(defaults.seed),
            ..defaults.clone()
        },
        stop,
    })
}

/// The guide's `/generate`: `max_length` is the total length (prompt included), as in
/// transformers' `generate`; `top_k` 0 keeps every token.
pub fn generate(
    r: &GenerateRequest,
    defaults: &Sampling,
    prompt_len: usize,
    context_len: usize,
) -> Result<Sampling, ApiError> {
    let requested = match r.max_length {
        Some(l) if l <= prompt_len as i64 => {
            return Err(bad(
                "max_length",
                format!(
                    "max_length ({l}) counts the prompt ({prompt_len} tokens) and must exceed it"
                ),
            ))
        }
        Some(l) => Some(l - prompt_len as i64),
        None => None,
    };
    let max_new_tokens = new_tokens(
        requested,
        "max_length",
        defaults.max_new_tokens,
        prompt_len,
        context_len,
    )?;
    let temperature = match r.temperature {
        Some(t) if t <= 0.0 => {
            return Err(bad(
                "temperature",
                format!("temperature must be > 0, not {t} (use do_sample: false for greedy)"),
            ))
        }
        Some(t) => t,
        None => defaults.temperature,
    };
    let top_k = match r.top_k {
        Some(k) if k < 0 => return Err(bad("top_k", format!("top_k must be >= 0, not {k}"))),
        Some(k) => k as usize,
        None => defaults.top_k,
    };
    Ok(Sampling {
        max_new_tokens,
        do_sample: r.do_sample.unwrap_or(defaults.do_sample),
        temperature,
        top_p: top_p(r.top_p, defaults.top_p)?,
        top_k,
        ..defaults.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Sampling {
        Sampling {
            max_new_tokens: 50,
            do_sample: true,
            temperature: 0.7,
            top_p: 0.9,
            top_k: 20,
            repetition_penalty: 1.0,
            seed: 42,
        }
    }

    fn fields(v: serde_json::Value) -> SamplingFields {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn openai_fields() {
        let d = defaults();
        // (fields, prompt_len, context) -> Ok((max_new, do_sample, temperature, top_p, seed, stops)) or Err(param, code)
        type Want =
            Result<(usize, bool, f64, f64, u64, usize), (&'static str, Option<&'static str>)>;
        let cases: Vec<(serde_json::Value, usize, usize, Want)> = vec![
            (
                serde_json::json!({}),
                10,
                100,
                Ok((50, true, 0.7, 0.9, 42, 0)),
            ),
            (
                serde_json::json!({}),
                80,
                100,
                Ok((20, true, 0.7, 0.9, 42, 0)),
            ),
            (
                serde_json::json!({"max_tokens": 90}),
                10,
                100,
                Ok((90, true, 0.7, 0.9, 42, 0)),
            ),
            (
                serde_json::json!({"max_completion_tokens": 5, "max_tokens": 90}),
                10,
                100,
                Ok((5, true, 0.7, 0.9, 42, 0)),
            ),
            (
                serde_json::json!({"temperature": 0, "top_p": 0.5, "seed": 7, "stop": "x"}),
                1,
                100,
                Ok((50, false, 0.7, 0.5, 7, 1)),
            ),
            (
                serde_json::json!({"temperature": 1.5, "stop": ["a", "b"], "n": 1}),
                1,
                100,
                Ok((50, true, 1.5, 0.9, 42, 2)),
            ),
            (
                serde_json::json!({"max_tokens": 91}),
                10,
                100,
                Err(("max_tokens", Some("context_length_exceeded"))),
            ),
            (
                serde_json::json!({}),
                100,
                100,
                Err(("max_tokens", Some("context_length_exceeded"))),
            ),
            (
                serde_json::json!({"max_tokens": 0}),
                1,
                100,
                Err(("max_tokens", None)),
            ),
            (serde_json::json!({"n": 2}), 1, 100, Err(("n", None))),
            (
                serde_json::json!({"temperature": 2.5}),
                1,
                100,
                Err(("temperature", None)),
            ),
            (
                serde_json::json!({"top_p": 0}),
                1,
                100,
                Err(("top_p", None)),
            ),
            (
                serde_json::json!({"stop": ["a", "b", "c", "d", "e"]}),
                1,
                100,
                Err(("stop", None)),
            ),
            (
                serde_json::json!({"stop": [""]}),
                1,
                100,
                Err(("stop", None)),
            ),
        ];
        for (v, prompt, ctx, want) in cases {
            let got = openai(&fields(v.clone()), &d, prompt, ctx)
                .map(|r| {
                    let s = r.sampling;
                    (
                        s.max_new_tokens,
                        s.do_sample,
                        s.temperature,
                        s.top_p,
                        s.seed,
                        r.stop.len(),
                    )
                })
                .map_err(|e| (e.param.unwrap_or(""), e.code));
            assert_eq!(got, want, "{v}");
        }
    }

    #[test]
    fn generate_fields() {
        let d = defaults();
        let req = |v: serde_json::Value| -> GenerateRequest { serde_json::from_value(v).unwrap() };
        let s = generate(&req(serde_json::json!({"prompt": "p", "max_length": 30, "do_sample": false, "top_k": 3, "temperature": 0.5, "top_p": 0.8})), &d, 10, 100).unwrap();
        assert_eq!(
            (
                s.max_new_tokens,
                s.do_sample,
                s.top_k,
                s.temperature,
                s.top_p
            ),
            (20, false, 3, 0.5, 0.8)
        );
        let s = generate(&req(serde_json::json!({"prompt": "p"})), &d, 10, 100).unwrap();
        assert_eq!((s.max_new_tokens, s.do_sample, s.top_k), (50, true, 20));
        for (v, param) in [
            (
                serde_json::json!({"prompt": "p", "max_length": 10}),
                "max_length",
            ),
            (
                serde_json::json!({"prompt": "p", "max_length": 101}),
                "max_length",
            ),
            (
                serde_json::json!({"prompt": "p", "temperature": 0}),
                "temperature",
            ),
            (serde_json::json!({"prompt": "p", "top_k": -1}), "top_k"),
        ] {
            assert_eq!(
                generate(&req(v.clone()), &d, 10, 100).unwrap_err().param,
                Some(param),
                "{v}"
            );
        }
    }
}
