//! `lf-trainer serve CONFIG.yaml [key=value ...]`: the base model and each adapter of
//! `adapter_name_or_path` behind lf-serve's HTTP API, loaded and prompted exactly as `chat` does
//! (`setup::model`, the config's template, `default_system`, and its generation keys as the
//! defaults a request overrides).
//!
//! `adapter_name_or_path` may list several adapters, comma-separated; each is served under its
//! directory's name (the base under the model directory's name), and a request's `model` picks
//! one. Each adapter is loaded as its own model for now (see lf-serve's docs on batching).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lf_api::training::TrainingConfig;
use lf_data::{ChatTemplate, TokenizerBundle};
use lf_model::{CausalLm, Decoding, GenerationParams};
use lf_serve::{ChatPrompt, Codec, Engine, Sampling};

use crate::error::TrainerError;
use crate::setup;

/// The command line's server settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// Sequences decoded together.
    pub max_running: usize,
    /// Requests that may wait; more get 429.
    pub queue: usize,
    /// Most prompt tokens fed to one sequence in one decoding step.
    pub prefill_chunk: usize,
    /// Most KV-cache positions the running sequences may reserve together.
    pub max_kv_tokens: Option<usize>,
}

/// The served models' names and adapter directories: the base (no adapter) first, then each
/// entry of the comma-separated `adapter_name_or_path` under its directory's name.
pub fn served_models(
    model_dir: &Path,
    adapters: Option<&str>,
) -> Result<Vec<(String, Option<PathBuf>)>, TrainerError> {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                TrainerError::config(format!(
                    "{} has no directory name to serve it by",
                    p.display()
                ))
            })
    };
    let mut models = vec![(name(model_dir)?, None)];
    for entry in adapters.into_iter().flat_map(|a| a.split(',')) {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let dir = PathBuf::from(entry.trim_end_matches('/'));
        let id = name(&dir)?;
        if models.iter().any(|(n, _)| *n == id) {
            return Err(TrainerError::config(format!(
                "adapter_name_or_path: two served models would be named `{id}` (each adapter is served under its directory's name; rename one)"
            )));
        }
        if !dir.is_dir() {
            return Err(TrainerError::config(format!(
                "adapter_name_or_path: {} is not a directory",
                dir.display()
            )));
        }
        models.push((id, Some(dir)));
    }
    Ok(models)
}

fn sampling(p: &GenerationParams) -> Sampling {
    Sampling {
        max_new_tokens: p.max_new_tokens,
        do_sample: p.do_sample,
        temperature: p.temperature,
        top_p: p.top_p,
        top_k: p.top_k,
        repetition_penalty: p.repetition_penalty,
        seed: p.seed,
    }
}

fn generation_params(s: &Sampling) -> GenerationParams {
    GenerationParams {
        max_new_tokens: s.max_new_tokens,
        do_sample: s.do_sample,
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k,
        repetition_penalty: s.repetition_penalty,
        seed: s.seed,
    }
}

/// The tokenizer and chat template `chat` uses.
struct TemplateCodec {
    tok: TokenizerBundle,
    template: ChatTemplate,
    default_system: Option<String>,
}

impl Codec for TemplateCodec {
    fn chat_prompt(&self, p: &ChatPrompt) -> Result<Vec<u32>, String> {
        let system = p.system.as_deref().or(self.default_system.as_deref());
        self.template
            .encode_prompt(&self.tok, system, &p.history, &p.user)
            .map_err(|e| e.to_string())
    }

    fn text_prompt(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut ids: Vec<u32> = match (&self.tok.bos, self.tok.add_bos_token) {
            (Some((_, bos)), true) => vec![*bos],
            _ => Vec::new(),
        };
        ids.extend(self.tok.encode(text).map_err(|e| e.to_string())?);
        Ok(ids)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.tok.decode(ids, true).map_err(|e| e.to_string())
    }
}

/// The served models on the model thread: one step of one sequence at a time.
struct ModelEngine {
    models: Vec<CausalLm>,
    prefill_chunk: usize,
}

impl Engine for ModelEngine {
    type Sequence = (usize, Decoding);

    fn start(
        &mut self,
        model: usize,
        prompt: &[u32],
        s: &Sampling,
    ) -> Result<Self::Sequence, String> {
        let lm = self
            .models
            .get(model)
            .ok_or_else(|| format!("no served model {model}"))?;
        let ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
        let state = lm
            .start_decoding(&ids, &generation_params(s), Some(self.prefill_chunk))
            .map_err(|e| e.to_string())?;
        Ok((model, state))
    }

    fn step(&mut self, seq: &mut Self::Sequence) -> Result<Option<u32>, String> {
        let lm = &self.models[seq.0];
        let token = lm.decode_step(&mut seq.1).map_err(|e| e.to_string())?;
        Ok(token.map(|t| t as u32))
    }
}

/// Serves `cfg`'s model and adapters until SIGINT/SIGTERM.
pub fn run_serve(cfg: &TrainingConfig, opts: &ServeOptions) -> Result<(), TrainerError> {
    let model_dir = setup::model_dir(cfg)?;
    let tok = setup::tokenizer(&model_dir)?;
    let (template, stop) = setup::template_and_stops(cfg, &tok)?;
    let arch = lf_model::read_architecture(&model_dir)
        .map_err(|e| crate::adapters::model_error("reading config.json", e))?;
    let served = served_models(&model_dir, cfg.adapter_name_or_path.as_deref())?;
    let addr: SocketAddr = format!("{}:{}", opts.host, opts.port)
        .parse()
        .map_err(|e| TrainerError::config(format!("--host {}: {e}", opts.host)))?;
    let server_setup = lf_serve::Setup {
        models: served.iter().map(|(n, _)| n.clone()).collect(),
        codec: Arc::new(TemplateCodec {
            tok,
            template,
            default_system: cfg.default_system.clone(),
        }),
        context_len: arch.max_position_embeddings as usize,
        defaults: sampling(&GenerationParams::from_config(cfg)),
        stop_ids: stop.iter().map(|&t| t as u32).collect(),
    };
    let options = lf_serve::Options {
        addr,
        queue_capacity: opts.queue,
        max_running: opts.max_running,
        max_kv_tokens: opts.max_kv_tokens,
    };
    let (cfg, prefill_chunk) = (cfg.clone(), opts.prefill_chunk);
    let load = move || -> Result<ModelEngine, String> {
        let device = setup::device();
        let models = served
            .iter()
            .map(|(_, adapter)| {
                let mut one = cfg.clone();
                one.adapter_name_or_path = adapter.as_ref().map(|a| a.display().to_string());
                setup::model(&one, &model_dir, device, false, None).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ModelEngine {
            models,
            prefill_chunk,
        })
    };
    lf_serve::serve(server_setup, options, load).map_err(|e| match e {
        lf_serve::ServeError::Bind { .. } => TrainerError::config(e.to_string()),
        other => TrainerError::runtime(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_model_names() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["base", "alpha", "beta", "x/alpha"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let p = |s: &str| dir.path().join(s).display().to_string();
        let names = |a: Option<&str>| {
            served_models(&dir.path().join("base"), a)
                .map(|v| {
                    v.into_iter()
                        .map(|(n, d)| (n, d.is_some()))
                        .collect::<Vec<_>>()
                })
                .map_err(|e| e.to_string())
        };
        assert_eq!(names(None).unwrap(), [("base".to_string(), false)]);
        let two = format!("{}, {}/", p("alpha"), p("beta"));
        assert_eq!(
            names(Some(&two)).unwrap(),
            [
                ("base".into(), false),
                ("alpha".into(), true),
                ("beta".into(), true)
            ]
        );
        let dup = format!("{},{}", p("alpha"), p("x/alpha"));
        assert!(names(Some(&dup)).unwrap_err().contains("named `alpha`"));
        assert!(names(Some(&p("base")))
            .unwrap_err()
            .contains("named `base`"));
        assert!(names(Some(&p("missing")))
            .unwrap_err()
            .contains("not a directory"));
    }
}
