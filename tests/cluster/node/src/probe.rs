//! Readiness and liveness probes, run from the host against the pod's IP (the host is on the
//! pods' bridge). httpGet and tcpSocket are real; HTTPS and gRPC probes check the TCP connection
//! only, and exec probes are not run (they count as successes).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// A probe's schedule and counters.
#[derive(Debug, Clone)]
pub struct ProbeState {
    pub probe: Probe,
    pub next_at: Instant,
    successes: i32,
    failures: i32,
}

impl ProbeState {
    pub fn new(probe: Probe, started: Instant) -> Self {
        let delay = secs(probe.initial_delay_seconds, 0);
        ProbeState {
            probe,
            next_at: started + delay,
            successes: 0,
            failures: 0,
        }
    }

    pub fn period(&self) -> Duration {
        secs(self.probe.period_seconds, 10).max(Duration::from_secs(1))
    }

    /// Records a result; returns the probe's verdict when a threshold was reached (`Some(true)`:
    /// passing, `Some(false)`: failing), `None` while undecided.
    pub fn record(&mut self, ok: bool, now: Instant) -> Option<bool> {
        self.next_at = now + self.period();
        if ok {
            self.failures = 0;
            self.successes += 1;
            (self.successes >= self.probe.success_threshold.unwrap_or(1).max(1)).then_some(true)
        } else {
            self.successes = 0;
            self.failures += 1;
            (self.failures >= self.probe.failure_threshold.unwrap_or(3).max(1)).then_some(false)
        }
    }
}

fn secs(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(v.and_then(|s| u64::try_from(s).ok()).unwrap_or(default))
}

/// The port of a probe: a number or the name of a container port.
pub fn port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok()),
    }
}

/// The HTTP/1.1 request of an httpGet probe.
pub fn http_request(host: &str, port: u16, path: &str, headers: &[(String, String)]) -> String {
    let path = if path.is_empty() { "/" } else { path };
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("Host") {
        req.push_str(&format!("Host: {host}:{port}\r\n"));
    }
    if !has("User-Agent") {
        req.push_str("User-Agent: kube-probe/1.37\r\n");
    }
    if !has("Accept") {
        req.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    req
}

/// The status code of an HTTP response's first line.
pub fn status_code(head: &str) -> Option<u16> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// Runs one probe against the pod; `true` on success.
pub async fn run(probe: &Probe, pod_ip: &str, container: &Container) -> bool {
    let limit = secs(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let attempt = async {
        if let Some(h) = &probe.http_get {
            let host = h
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| pod_ip.into());
            let port = port(&h.port, container)?;
            let mut stream = TcpStream::connect((host.as_str(), port)).await.ok()?;
            if h.scheme
                .as_deref()
                .unwrap_or("HTTP")
                .eq_ignore_ascii_case("HTTPS")
            {
                return Some(true);
            }
            let headers: Vec<(String, String)> = h
                .http_headers
                .iter()
                .flatten()
                .map(|hh| (hh.name.clone(), hh.value.clone()))
                .collect();
            let req = http_request(&host, port, h.path.as_deref().unwrap_or("/"), &headers);
            stream.write_all(req.as_bytes()).await.ok()?;
            let mut buf = vec![0u8; 1024];
            let n = stream.read(&mut buf).await.ok()?;
            let code = status_code(&String::from_utf8_lossy(&buf[..n]))?;
            Some((200..400).contains(&code))
        } else if let Some(t) = &probe.tcp_socket {
            let host = t
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| pod_ip.into());
            let port = port(&t.port, container)?;
            Some(TcpStream::connect((host.as_str(), port)).await.is_ok())
        } else if let Some(g) = &probe.grpc {
            let port = u16::try_from(g.port).ok()?;
            Some(TcpStream::connect((pod_ip, port)).await.is_ok())
        } else {
            Some(true)
        }
    };
    matches!(timeout(limit, attempt).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn named_and_numbered_ports() {
        let c: Container = serde_json::from_value(
            json!({"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}),
        )
        .unwrap();
        assert_eq!(port(&IntOrString::String("http".into()), &c), Some(8080));
        assert_eq!(port(&IntOrString::Int(9090), &c), Some(9090));
        assert_eq!(port(&IntOrString::String("nope".into()), &c), None);
    }

    #[test]
    fn request_and_status() {
        let r = http_request("10.244.1.2", 8080, "/readyz", &[("X-A".into(), "1".into())]);
        assert!(r.starts_with("GET /readyz HTTP/1.1\r\nHost: 10.244.1.2:8080\r\n"));
        assert!(r.contains("X-A: 1\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
        assert_eq!(status_code("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(status_code("garbage"), None);
    }

    #[test]
    fn thresholds() {
        let probe: Probe = serde_json::from_value(
            json!({"failureThreshold": 2, "successThreshold": 1, "periodSeconds": 5}),
        )
        .unwrap();
        let t0 = Instant::now();
        let mut s = ProbeState::new(probe, t0);
        assert_eq!(s.next_at, t0);
        assert_eq!(s.record(true, t0), Some(true));
        assert_eq!(s.next_at, t0 + Duration::from_secs(5));
        assert_eq!(s.record(false, t0), None);
        assert_eq!(s.record(false, t0), Some(false));
    }

    #[tokio::test]
    async fn http_probe_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for code in ["200 OK", "503 Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {code}\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let probe: Probe =
            serde_json::from_value(json!({"httpGet": {"path": "/readyz", "port": port}})).unwrap();
        let c: Container = serde_json::from_value(json!({"name": "c"})).unwrap();
        assert!(run(&probe, "127.0.0.1", &c).await);
        assert!(!run(&probe, "127.0.0.1", &c).await);
        let tcp: Probe = serde_json::from_value(json!({"tcpSocket": {"port": 1}})).unwrap();
        assert!(!run(&tcp, "127.0.0.1", &c).await);
    }
}
