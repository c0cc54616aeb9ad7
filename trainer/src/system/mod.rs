//! System metrics of a training pod: this process's CPU use and resident memory, the host's
//! memory, `/dev/shm`, and per-GPU utilisation, memory, temperature and power (NVML, where a GPU
//! exists). [`SystemProbe::sample`] reads them; the Prometheus endpoint refreshes its gauges from
//! it at every scrape and the trackers get them with every record (`system/*`).

mod gauges;
mod nvml;
mod procfs;
mod sample;

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

pub use gauges::SystemGauges;
pub use nvml::GpuSample;
use nvml::Nvml;
pub use sample::SystemSample;

/// Reads the system metrics; holds NVML when it loaded.
pub struct SystemProbe {
    nvml: Option<Nvml>,
    /// The previous `(instant, CPU seconds)`, for the CPU percentage.
    last_cpu: Mutex<Option<(Instant, f64)>>,
}

impl SystemProbe {
    /// Loads NVML (`LF_NVML_LIBRARY`, default `libnvidia-ml.so.1`) if it is there.
    pub fn new() -> SystemProbe {
        let library = std::env::var(nvml::LIBRARY_VAR)
            .ok()
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| nvml::DEFAULT_LIBRARY.to_string());
        SystemProbe::with_nvml_library(&library)
    }

    /// Loads NVML from `library` if it can.
    pub fn with_nvml_library(library: &str) -> SystemProbe {
        let nvml = match Nvml::load(library) {
            Ok(n) => {
                tracing::debug!(library, gpus = n.sample().len(), "NVML loaded");
                Some(n)
            }
            Err(why) => {
                tracing::debug!(library, %why, "no NVML: no GPU system metrics");
                None
            }
        };
        SystemProbe {
            nvml,
            last_cpu: Mutex::new(None),
        }
    }

    pub fn sample(&self) -> SystemSample {
        let cpu = procfs::process_cpu_seconds();
        let now = Instant::now();
        let cpu_percent = match (cpu, self.last_cpu.lock()) {
            (Some(c), Ok(mut last)) => {
                let percent = last.and_then(|(t, c0)| {
                    let wall = now.duration_since(t).as_secs_f64();
                    (wall > 0.0).then(|| (c - c0).max(0.0) / wall * 100.0)
                });
                *last = Some((now, c));
                percent
            }
            _ => None,
        };
        let host = procfs::host_memory_bytes();
        let shm = procfs::filesystem_bytes(Path::new(lf_api::runtime::paths::SHM_DIR));
        SystemSample {
            process_cpu_seconds: cpu,
            process_cpu_percent: cpu_percent,
            process_rss_bytes: procfs::process_rss_bytes(),
            host_memory_total_bytes: host.map(|h| h.0),
            host_memory_available_bytes: host.map(|h| h.1),
            shm_used_bytes: shm.map(|s| s.0),
            shm_total_bytes: shm.map(|s| s.1),
            gpus: self.nvml.as_ref().map(Nvml::sample).unwrap_or_default(),
        }
    }
}

impl Default for SystemProbe {
    fn default() -> Self {
        Self::new()
    }
}
