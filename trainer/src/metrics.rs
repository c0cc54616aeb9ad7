//! The Prometheus endpoint (`LF_METRICS_ADDR`, off when unset): step, loss, learning rate,
//! tokens/s and peak memory (and a preference run's `rewards/*`, `logps/*`), and the system
//! metrics of [`crate::system`] read afresh at every scrape, served as text exposition on any path
//! by a small thread.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;

use prometheus::{Encoder, Gauge, GaugeVec, IntGauge, Opts, Registry, TextEncoder};

use crate::error::TrainerError;
use crate::preference::PreferenceMetrics;
use crate::system::{SystemGauges, SystemProbe};

/// The trainer's gauges.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub step: IntGauge,
    pub total_steps: IntGauge,
    pub loss: Gauge,
    pub learning_rate: Gauge,
    pub tokens_per_second: Gauge,
    pub grad_norm: Gauge,
    pub peak_memory_bytes: IntGauge,
    pub eval_loss: Gauge,
    /// `stage: dpo`: `lf_trainer_preference{metric="rewards/chosen"}` and the other metrics of
    /// the last logging window.
    pub preference: GaugeVec,
    system: SystemGauges,
    probe: Arc<SystemProbe>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let int = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric names are valid");
            registry
                .register(Box::new(g.clone()))
                .expect("each metric is registered once");
            g
        };
        let float = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("static metric names are valid");
            registry
                .register(Box::new(g.clone()))
                .expect("each metric is registered once");
            g
        };
        Metrics {
            step: int("lf_trainer_step", "Optimiser steps completed"),
            total_steps: int("lf_trainer_total_steps", "Optimiser steps of the whole run"),
            loss: float(
                "lf_trainer_loss",
                "Training loss of the last logging window",
            ),
            learning_rate: float("lf_trainer_learning_rate", "Learning rate of the last step"),
            tokens_per_second: float(
                "lf_trainer_tokens_per_second",
                "Training tokens per second (last logging window)",
            ),
            grad_norm: float(
                "lf_trainer_grad_norm",
                "Gradient norm before clipping (last step)",
            ),
            peak_memory_bytes: int(
                "lf_trainer_peak_memory_bytes",
                "Peak device memory (CUDA allocator) or peak RSS on CPU",
            ),
            eval_loss: float(
                "lf_trainer_eval_loss",
                "Loss on the validation split at the last evaluation",
            ),
            preference: {
                let opts = Opts::new(
                    "lf_trainer_preference",
                    "Preference metrics (rewards/*, logps/*) of the last logging window",
                );
                let g = GaugeVec::new(opts, &["metric"]).expect("static metric names are valid");
                registry
                    .register(Box::new(g.clone()))
                    .expect("each metric is registered once");
                g
            },
            system: SystemGauges::register(&registry),
            probe: Arc::new(SystemProbe::new()),
            registry,
        }
    }

    /// Publishes a window's preference metrics.
    pub fn set_preference(&self, p: &PreferenceMetrics) {
        for (name, value) in p.named() {
            self.preference.with_label_values(&[name]).set(value);
        }
    }

    /// The text exposition of every gauge (the system metrics read now).
    pub fn render(&self) -> String {
        self.system.update(&self.probe.sample());
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Serves [`Metrics::render`] on `addr` from a background thread. Returns the bound address.
    pub fn serve(&self, addr: &str) -> Result<std::net::SocketAddr, TrainerError> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            TrainerError::config(format!("cannot listen on LF_METRICS_ADDR={addr}: {e}"))
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| TrainerError::runtime(e.to_string()))?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("lf-metrics".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let mut stream = stream;
                    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                    let mut req = [0u8; 1024];
                    let _ = stream.read(&mut req);
                    let body = me.render();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body.as_bytes()));
                }
            })
            .map_err(|e| TrainerError::runtime(format!("cannot start the metrics thread: {e}")))?;
        Ok(bound)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_gauges() {
        let m = Metrics::new();
        m.step.set(7);
        m.loss.set(1.25);
        let addr = m.serve("127.0.0.1:0").unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"));
        assert!(out.contains("lf_trainer_step 7"), "{out}");
        assert!(out.contains("lf_trainer_loss 1.25"), "{out}");
    }

    #[test]
    fn serves_the_preference_metrics() {
        let m = Metrics::new();
        m.set_preference(&PreferenceMetrics {
            rewards_accuracies: Some(0.75),
            ..Default::default()
        });
        let out = m.render();
        assert!(
            out.contains("lf_trainer_preference{metric=\"rewards/accuracies\"} 0.75"),
            "{out}"
        );
    }
}
