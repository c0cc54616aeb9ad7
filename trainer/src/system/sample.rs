//! One reading of the system metrics, and its tracker scalars.

use super::nvml::GpuSample;

/// One reading.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SystemSample {
    pub process_cpu_seconds: Option<f64>,
    /// CPU use since the previous sample, in percent of one core (200 = two cores busy).
    pub process_cpu_percent: Option<f64>,
    pub process_rss_bytes: Option<u64>,
    pub host_memory_total_bytes: Option<u64>,
    pub host_memory_available_bytes: Option<u64>,
    pub shm_used_bytes: Option<u64>,
    pub shm_total_bytes: Option<u64>,
    pub gpus: Vec<GpuSample>,
}

impl SystemSample {
    /// The figures as tracker scalars (`system/...`, `system/gpu<i>/...`).
    pub fn scalars(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        let mut push = |name: String, v: Option<f64>| {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                out.push((name, v));
            }
        };
        push("system/cpu_percent".into(), self.process_cpu_percent);
        push(
            "system/rss_bytes".into(),
            self.process_rss_bytes.map(|b| b as f64),
        );
        push(
            "system/host_memory_available_bytes".into(),
            self.host_memory_available_bytes.map(|b| b as f64),
        );
        push(
            "system/shm_used_bytes".into(),
            self.shm_used_bytes.map(|b| b as f64),
        );
        for g in &self.gpus {
            let p = format!("system/gpu{}", g.index);
            push(format!("{p}/utilization_percent"), g.utilization_percent);
            push(
                format!("{p}/memory_used_bytes"),
                g.memory_used_bytes.map(|b| b as f64),
            );
            push(format!("{p}/temperature_celsius"), g.temperature_celsius);
            push(format!("{p}/power_watts"), g.power_watts);
        }
        out
    }
}
