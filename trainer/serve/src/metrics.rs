//! The server's Prometheus metrics (`GET /metrics`, text exposition).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric the server keeps; cheap to clone (the values are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `lf_serve_requests_total{endpoint, status}`.
    pub requests: IntCounterVec,
    pub prompt_tokens: IntCounter,
    pub generated_tokens: IntCounter,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub queue_depth: IntGauge,
    pub running: IntGauge,
    /// `lf_serve_sequences_finished_total{reason}`: stop, length, cancelled (the client left or a
    /// stop string ended it), error.
    pub finished: IntCounterVec,
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry
                .register(c)
                .expect("each static metric is registered once");
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric names are valid");
            reg(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric names are valid");
            reg(Box::new(g.clone()));
            g
        };
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("static metric names are valid");
            reg(Box::new(h.clone()));
            h
        };
        let counters = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric names are valid");
            reg(Box::new(c.clone()));
            c
        };
        Metrics {
            requests: counters(
                "lf_serve_requests_total",
                "HTTP requests by endpoint and status code",
                &["endpoint", "status"],
            ),
            prompt_tokens: counter(
                "lf_serve_prompt_tokens_total",
                "Prompt tokens of admitted sequences",
            ),
            generated_tokens: counter("lf_serve_generated_tokens_total", "Tokens generated"),
            time_to_first_token: histogram(
                "lf_serve_time_to_first_token_seconds",
                "From a request's arrival in the queue to its first generated token",
            ),
            inter_token_latency: histogram(
                "lf_serve_inter_token_latency_seconds",
                "Between consecutive tokens of one sequence",
            ),
            queue_depth: gauge(
                "lf_serve_queue_depth",
                "Requests waiting for a place among the running sequences",
            ),
            running: gauge(
                "lf_serve_running_sequences",
                "Sequences being decoded (each decoding step advances all of them)",
            ),
            finished: counters(
                "lf_serve_sequences_finished_total",
                "Sequences that left the running set, by reason",
                &["reason"],
            ),
            registry,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
