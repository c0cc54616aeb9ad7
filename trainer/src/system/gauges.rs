//! The system metrics as Prometheus gauges (`lf_trainer_process_*`, `lf_trainer_host_*`,
//! `lf_trainer_shm_*`, and `lf_trainer_gpu_*{gpu="<index>"}`).

use prometheus::{Gauge, GaugeVec, Opts, Registry};

use super::sample::SystemSample;

/// The gauges, registered once.
#[derive(Clone)]
pub struct SystemGauges {
    process_cpu_seconds: Gauge,
    process_rss_bytes: Gauge,
    host_memory_total_bytes: Gauge,
    host_memory_available_bytes: Gauge,
    shm_used_bytes: Gauge,
    shm_total_bytes: Gauge,
    gpu_utilization_percent: GaugeVec,
    gpu_memory_used_bytes: GaugeVec,
    gpu_memory_total_bytes: GaugeVec,
    gpu_temperature_celsius: GaugeVec,
    gpu_power_watts: GaugeVec,
}

impl SystemGauges {
    pub fn register(registry: &Registry) -> SystemGauges {
        let one = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("static metric names are valid");
            registry
                .register(Box::new(g.clone()))
                .expect("each metric is registered once");
            g
        };
        let per_gpu = |name: &str, help: &str| {
            let g = GaugeVec::new(Opts::new(name, help), &["gpu"])
                .expect("static metric names are valid");
            registry
                .register(Box::new(g.clone()))
                .expect("each metric is registered once");
            g
        };
        SystemGauges {
            process_cpu_seconds: one(
                "lf_trainer_process_cpu_seconds_total",
                "User and system CPU seconds of the trainer process",
            ),
            process_rss_bytes: one(
                "lf_trainer_process_resident_memory_bytes",
                "Resident memory of the trainer process",
            ),
            host_memory_total_bytes: one("lf_trainer_host_memory_total_bytes", "Host memory"),
            host_memory_available_bytes: one(
                "lf_trainer_host_memory_available_bytes",
                "Host memory available (MemAvailable)",
            ),
            shm_used_bytes: one("lf_trainer_shm_used_bytes", "Bytes used in /dev/shm"),
            shm_total_bytes: one("lf_trainer_shm_total_bytes", "Size of /dev/shm"),
            gpu_utilization_percent: per_gpu(
                "lf_trainer_gpu_utilization_percent",
                "GPU busy time over NVML's last sample period",
            ),
            gpu_memory_used_bytes: per_gpu("lf_trainer_gpu_memory_used_bytes", "GPU memory used"),
            gpu_memory_total_bytes: per_gpu("lf_trainer_gpu_memory_total_bytes", "GPU memory"),
            gpu_temperature_celsius: per_gpu(
                "lf_trainer_gpu_temperature_celsius",
                "GPU die temperature",
            ),
            gpu_power_watts: per_gpu("lf_trainer_gpu_power_watts", "GPU power draw"),
        }
    }

    /// Sets every gauge the sample has a figure for.
    pub fn update(&self, s: &SystemSample) {
        let set = |g: &Gauge, v: Option<f64>| {
            if let Some(v) = v {
                g.set(v);
            }
        };
        set(&self.process_cpu_seconds, s.process_cpu_seconds);
        set(
            &self.process_rss_bytes,
            s.process_rss_bytes.map(|b| b as f64),
        );
        set(
            &self.host_memory_total_bytes,
            s.host_memory_total_bytes.map(|b| b as f64),
        );
        set(
            &self.host_memory_available_bytes,
            s.host_memory_available_bytes.map(|b| b as f64),
        );
        set(&self.shm_used_bytes, s.shm_used_bytes.map(|b| b as f64));
        set(&self.shm_total_bytes, s.shm_total_bytes.map(|b| b as f64));
        for g in &s.gpus {
            let gpu = g.index.to_string();
            let set_gpu = |vec: &GaugeVec, v: Option<f64>| {
                if let Some(v) = v {
                    vec.with_label_values(&[gpu.as_str()]).set(v);
                }
            };
            set_gpu(&self.gpu_utilization_percent, g.utilization_percent);
            set_gpu(
                &self.gpu_memory_used_bytes,
                g.memory_used_bytes.map(|b| b as f64),
            );
            set_gpu(
                &self.gpu_memory_total_bytes,
                g.memory_total_bytes.map(|b| b as f64),
            );
            set_gpu(&self.gpu_temperature_celsius, g.temperature_celsius);
            set_gpu(&self.gpu_power_watts, g.power_watts);
        }
    }
}
