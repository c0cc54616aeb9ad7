//! The operator's HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` (the process is
//! alive and, where the controller runs, its heartbeat is recent) and `/readyz` (the API server
//! answered and, when electing, the lease loop is running).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::{Metrics, HEARTBEAT_LIMIT};

/// Readiness, flipped by `run` once the operator can serve.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

fn respond(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

/// The answer to one request.
pub fn route(path: &str, metrics: &Metrics, ready: &Readiness) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        "/healthz" | "/livez" => match metrics.heartbeat_age() {
            Some(age) if age > HEARTBEAT_LIMIT => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("the controller's heartbeat is {} s old\n", age.as_secs()),
            ),
            _ => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        },
        "/readyz" if ready.get() => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".into(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Binds `addr` and serves until the task is dropped. Returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    ready: Readiness,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let resp = route(req.uri().path(), &metrics, &ready);
                    async move { Ok::<_, Infallible>(resp) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(error = %e, "metrics connection ended with an error");
                }
            });
        }
    });
    Ok((local, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_follows_the_controllers_heartbeat() {
        let metrics = Metrics::new().expect("metrics");
        let ready = Readiness::default();
        let health = |m: &Metrics| route("/healthz", m, &ready).status();
        assert_eq!(
            health(&metrics),
            StatusCode::OK,
            "no controller here (a standby replica)"
        );
        metrics.beat();
        assert_eq!(health(&metrics), StatusCode::OK);
        metrics.flatline();
        assert_eq!(
            health(&metrics),
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller ended"
        );
        metrics.beat();
        assert_eq!(health(&metrics), StatusCode::OK);
        assert_eq!(
            route("/readyz", &metrics, &ready).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
