//! The HTTP handlers: parse, check (400s), submit to the model thread (429/503 when it cannot
//! take more), answer whole or as server-sent events.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use crate::api::{
    ChatRequest, CompletionRequest, GenerateRequest, GenerateResponse, HealthResponse, ModelCard,
    ModelList, SamplingFields, Usage,
};
use crate::codec::Codec;
use crate::error::ApiError;
use crate::generation::Generation;
use crate::metrics::Metrics;
use crate::params::{self, Sampling};
use crate::prompt;
use crate::scheduler::{Job, Queue};
use crate::shape::{Api, Head};

/// The model thread's state, as `/health` reports it.
pub const LOADING: u8 = 0;
pub const LOADED: u8 = 1;
pub const FAILED: u8 = 2;

/// What every handler shares.
pub struct App {
    /// Served model ids: the base first, then each adapter.
    pub models: Vec<String>,
    pub codec: Arc<dyn Codec>,
    pub context_len: usize,
    pub defaults: Sampling,
    pub queue: Queue,
    pub metrics: Metrics,
    pub state: Arc<AtomicU8>,
    pub created: u64,
    pub next_id: AtomicU64,
}

type Shared = State<Arc<App>>;

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "the body is not valid JSON"
        } else {
            "the body does not match the request schema"
        };
        ApiError::invalid(None, Some("invalid_json"), format!("{what}: {e}"))
    })
}

impl App {
    /// The index of the requested model (absent: the base).
    fn model(&self, requested: Option<&str>) -> Result<usize, ApiError> {
        match requested {
            None => Ok(0),
            Some(m) => self.models.iter().position(|id| id == m).ok_or_else(|| {
                ApiError::invalid(
                    Some("model"),
                    Some("model_not_found"),
                    format!(
                        "the model `{m}` does not exist; this server has {}",
                        self.models.join(", ")
                    ),
                )
            }),
        }
    }

    fn ready(&self) -> Result<(), ApiError> {
        match self.state.load(Ordering::Acquire) {
            FAILED => Err(ApiError::unavailable(
                "the model is not serving: it failed to load or its thread stopped (see the server log)",
            )),
            _ => Ok(()),
        }
    }

    fn submit(
        &self,
        model: usize,
        prompt: Vec<u32>,
        sampling: Sampling,
        stops: Vec<String>,
    ) -> Result<Generation, ApiError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let answered = Arc::new(AtomicBool::new(false));
        self.queue.submit(Job {
            model,
            prompt,
            sampling,
            events: tx,
            queued_at: Instant::now(),
            answered: answered.clone(),
        })?;
        Ok(Generation::new(rx, stops, self.codec.clone(), answered))
    }

    fn head(&self, prefix: &str, model: usize) -> Head {
        Head {
            id: format!("{prefix}-{}", self.next_id.fetch_add(1, Ordering::Relaxed)),
            created: self.created,
            model: self.models[model].clone(),
        }
    }
}

fn encode_error(e: String) -> ApiError {
    ApiError::invalid(None, None, format!("the prompt could not be encoded: {e}"))
}

/// Encodes a prompt on the blocking pool: a long prompt's chat template and tokenizer run take
/// milliseconds that would otherwise hold an async worker (and every request it serves).
async fn encode(
    app: &Arc<App>,
    f: impl FnOnce(&dyn Codec) -> Result<Vec<u32>, String> + Send + 'static,
) -> Result<Vec<u32>, ApiError> {
    let codec = app.codec.clone();
    tokio::task::spawn_blocking(move || f(codec.as_ref()))
        .await
        .map_err(|e| ApiError::internal(format!("encoding the prompt failed: {e}")))?
        .map_err(encode_error)
}

pub async fn chat(State(app): Shared, body: Bytes) -> Response {
    let run = async {
        let req: ChatRequest = parse(&body)?;
        app.ready()?;
        let model = app.model(req.model.as_deref())?;
        let chat = prompt::chat_prompt(&req.messages)?;
        let ids = encode(&app, move |c| c.chat_prompt(&chat)).await?;
        complete(&app, Api::Chat, "chatcmpl", model, ids, &req.sampling).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn completions(State(app): Shared, body: Bytes) -> Response {
    let run = async {
        let req: CompletionRequest = parse(&body)?;
        app.ready()?;
        let model = app.model(req.model.as_deref())?;
        let text = prompt::completion_prompt(&req.prompt)?.to_string();
        let ids = encode(&app, move |c| c.text_prompt(&text)).await?;
        complete(&app, Api::Completion, "cmpl", model, ids, &req.sampling).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn complete(
    app: &Arc<App>,
    api: Api,
    prefix: &str,
    model: usize,
    ids: Vec<u32>,
    fields: &SamplingFields,
) -> Result<Response, ApiError> {
    if ids.is_empty() {
        return Err(ApiError::invalid(
            Some("prompt"),
            None,
            "the prompt encodes to no tokens",
        ));
    }
    let decode = params::openai(fields, &app.defaults, ids.len(), app.context_len)?;
    let prompt_tokens = ids.len();
    let mut generation = app.submit(model, ids, decode.sampling, decode.stop)?;
    let head = app.head(prefix, model);
    if fields.stream {
        let include_usage = fields
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        return Ok(stream(api, head, generation, prompt_tokens, include_usage).into_response());
    }
    let (text, finish) = generation.collect().await?;
    let usage = Usage::new(prompt_tokens, generation.completion_tokens());
    Ok(Json(api.response(&head, &text, finish, usage)).into_response())
}

/// Server-sent events: the opening chunk, a chunk per piece of text, the finish, the usage when
/// asked, `[DONE]`. An error midway is sent as an `{"error": ...}` event before `[DONE]`.
fn stream(
    api: Api,
    head: Head,
    generation: Generation,
    prompt_tokens: usize,
    include_usage: bool,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    enum Stage {
        Open,
        Body,
        Usage,
        Done,
        End,
    }
    let event = |v: serde_json::Value| SseEvent::default().data(v.to_string());
    let state = (Stage::Open, generation);
    let events = futures::stream::unfold(state, move |(stage, mut g)| {
        let head = head.clone();
        async move {
            match stage {
                Stage::Open => match api.opening(&head) {
                    Some(v) => Some((Ok(event(v)), (Stage::Body, g))),
                    None => Some((Ok(SseEvent::default().comment("")), (Stage::Body, g))),
                },
                Stage::Body => loop {
                    match g.next().await {
                        Some(Ok(chunk)) if chunk.text.is_empty() && chunk.finish.is_none() => {
                            continue
                        }
                        Some(Ok(chunk)) => {
                            let next = match (chunk.finish, include_usage) {
                                (None, _) => Stage::Body,
                                (Some(_), true) => Stage::Usage,
                                (Some(_), false) => Stage::Done,
                            };
                            break Some((
                                Ok(event(api.delta(&head, &chunk.text, chunk.finish))),
                                (next, g),
                            ));
                        }
                        Some(Err(e)) => break Some((Ok(event(e.body())), (Stage::Done, g))),
                        None => {
                            break Some((Ok(SseEvent::default().data("[DONE]")), (Stage::End, g)))
                        }
                    }
                },
                Stage::Usage => {
                    let usage = Usage::new(prompt_tokens, g.completion_tokens());
                    Some((Ok(event(api.usage(&head, usage))), (Stage::Done, g)))
                }
                Stage::Done => Some((Ok(SseEvent::default().data("[DONE]")), (Stage::End, g))),
                Stage::End => None,
            }
        }
    });
    Sse::new(events)
}

pub async fn generate(State(app): Shared, body: Bytes) -> Response {
    let run = async {
        let req: GenerateRequest = parse(&body)?;
        app.ready()?;
        let model = match req.model.as_deref() {
            Some(m) => app.model(Some(m))?,
            None => usize::from(app.models.len() > 1),
        };
        let text = req.prompt.clone();
        let ids = encode(&app, move |c| c.text_prompt(&text)).await?;
        if ids.is_empty() {
            return Err(ApiError::invalid(
                Some("prompt"),
                None,
                "the prompt encodes to no tokens",
            ));
        }
        let sampling = params::generate(&req, &app.defaults, ids.len(), app.context_len)?;
        let prompt_tokens = ids.len();
        let mut generation = app.submit(model, ids, sampling, Vec::new())?;
        let (generated_text, _) = generation.collect().await?;
        let generated_tokens = generation.completion_tokens();
        Ok(Json(GenerateResponse {
            generated_text,
            prompt_tokens,
            generated_tokens,
            total_tokens: prompt_tokens + generated_tokens,
        })
        .into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn models(State(app): Shared) -> Json<ModelList> {
    let data = app
        .models
        .iter()
        .enumerate()
        .map(|(i, id)| ModelCard {
            id: id.clone(),
            object: "model",
            created: app.created,
            owned_by: "lf-operator",
            parent: (i > 0).then(|| app.models[0].clone()),
        })
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

/// 200 once the model is loaded; 503 while it loads or after it failed (a readiness probe).
pub async fn health(State(app): Shared) -> Response {
    let (code, status, loaded) = match app.state.load(Ordering::Acquire) {
        LOADED => (StatusCode::OK, "healthy", true),
        FAILED => (StatusCode::SERVICE_UNAVAILABLE, "failed", false),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "loading", false),
    };
    (
        code,
        Json(HealthResponse {
            status,
            model_loaded: loaded,
        }),
    )
        .into_response()
}

pub async fn metrics(State(app): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

pub async fn not_found(req: Request) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no route {} {}", req.method(), req.uri().path()),
        kind: "invalid_request_error",
        param: None,
        code: Some("not_found"),
    }
}

/// The endpoint label of a path (unknown paths share one, to bound the label's values).
fn endpoint(path: &str) -> &'static str {
    const KNOWN: [&str; 7] = [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/generate",
        "/health",
        "/metrics",
        "other",
    ];
    KNOWN
        .iter()
        .copied()
        .find(|k| *k == path)
        .unwrap_or("other")
}

/// Counts every request by endpoint and status (a stream is counted when its headers go out).
pub async fn count(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let label = endpoint(req.uri().path());
    let response = next.run(req).await;
    metrics
        .requests
        .with_label_values(&[label, response.status().as_str()])
        .inc();
    response
}
