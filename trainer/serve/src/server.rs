//! Starting the server: the router, the model thread, the listener, and shutdown on SIGINT or
//! SIGTERM.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::codec::Codec;
use crate::error::ServeError;
use crate::metrics::Metrics;
use crate::params::Sampling;
use crate::routes::{self, App, FAILED, LOADED, LOADING};
use crate::scheduler::{self, Engine, Queue};

/// What the server serves (known before the model is loaded).
pub struct Setup {
    /// Model ids: the base first, then each adapter.
    pub models: Vec<String>,
    pub codec: Arc<dyn Codec>,
    /// Longest sequence (prompt + completion) the model takes.
    pub context_len: usize,
    /// Decoding defaults (a request's fields override them).
    pub defaults: Sampling,
    /// Token ids that end an answer.
    pub stop_ids: Vec<u32>,
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    /// Requests that may wait for a place among the running sequences; more get 429.
    pub queue_capacity: usize,
    /// Sequences decoded together.
    pub max_running: usize,
    /// Most KV-cache positions (prompt + `max_tokens` of every running sequence) held at once;
    /// also caps one request's prompt + completion. `None`: only `max_running` limits.
    pub max_kv_tokens: Option<usize>,
}

/// The router over `app` (also for tests that bring their own listener).
pub fn router(app: Arc<App>) -> Router {
    let metrics = app.metrics.clone();
    Router::new()
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/models", get(routes::models))
        .route("/generate", post(routes::generate))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(metrics, routes::count))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serves until SIGINT/SIGTERM. `load` runs on the model thread (the listener is up and `/health`
/// says `loading` meanwhile); the engine it returns never leaves that thread. Prints
/// `listening on http://ADDR` on stdout once the port is bound (port 0 picks a free one).
pub fn serve<E, F>(setup: Setup, options: Options, load: F) -> Result<(), ServeError>
where
    E: Engine,
    F: FnOnce() -> Result<E, String> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let metrics = Metrics::new();
    let (queue, jobs) = Queue::bounded(options.queue_capacity.max(1), metrics.clone());
    let state = Arc::new(AtomicU8::new(LOADING));
    let model_thread = {
        let (state, metrics) = (state.clone(), metrics.clone());
        let opts = scheduler::Options {
            max_running: options.max_running,
            stop_ids: setup.stop_ids.clone(),
            max_kv_tokens: options.max_kv_tokens.unwrap_or(usize::MAX),
        };
        std::thread::Builder::new()
            .name("lf-serve-model".into())
            .spawn(move || {
                // However the thread ends (a load error, or a panic in loading or outside a
                // sequence), /health then says the model is not serving.
                struct Failed(Arc<AtomicU8>);
                impl Drop for Failed {
                    fn drop(&mut self) {
                        self.0.store(FAILED, Ordering::Release);
                    }
                }
                let _failed = Failed(state.clone());
                match load() {
                    Ok(mut engine) => {
                        state.store(LOADED, Ordering::Release);
                        tracing::info!("model loaded; serving");
                        scheduler::run(&mut engine, &jobs, &opts, &metrics);
                    }
                    Err(e) => tracing::error!(error = %e, "the model failed to load"),
                }
            })?
    };
    let app = Arc::new(App {
        models: setup.models,
        codec: setup.codec,
        context_len: options
            .max_kv_tokens
            .map_or(setup.context_len, |kv| kv.min(setup.context_len)),
        defaults: setup.defaults,
        queue,
        metrics,
        state,
        created: unix_now(),
        next_id: AtomicU64::new(1),
    });
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: options.addr.to_string(),
                source,
            })?;
        let local = listener.local_addr()?;
        println!("listening on http://{local}");
        tracing::info!(addr = %local, models = ?app.models, "serving");
        axum::serve(listener, router(app))
            .with_graceful_shutdown(shutdown())
            .await
            .map_err(ServeError::Io)
    })?;
    let _ = model_thread.join();
    Ok(())
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
