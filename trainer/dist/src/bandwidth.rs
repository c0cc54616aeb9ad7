//! The pre-flight all-reduce bandwidth probe: a misconfigured network shows up at the start of a
//! job, not as a slow job.

use std::time::Instant;

use tch::{Device, Kind, Tensor};

use crate::error::DistError;
use crate::group::ProcessGroup;

/// Result of [`bandwidth_probe`]; every rank gets the same numbers (times are averaged over ranks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BusBandwidth {
    /// Bytes all-reduced per iteration.
    pub bytes: usize,
    /// Timed iterations (after one untimed warm-up).
    pub iters: usize,
    pub world_size: usize,
    /// Mean wall time of one all-reduce.
    pub seconds_per_iter: f64,
    /// Algorithm bandwidth, `bytes / time`, in GB/s (10^9 bytes).
    pub algo_gbps: f64,
    /// Bus bandwidth, `algo × 2(n−1)/n` (the NCCL-tests convention), in GB/s; 0 for one rank.
    pub bus_gbps: f64,
}

impl std::fmt::Display for BusBandwidth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "all-reduce of {} MiB over {} ranks: {:.3} ms/iter, algbw {:.3} GB/s, busbw {:.3} GB/s ({} iters)",
            self.bytes as f64 / (1 << 20) as f64,
            self.world_size,
            self.seconds_per_iter * 1e3,
            self.algo_gbps,
            self.bus_gbps,
            self.iters
        )
    }
}

/// Bus-bandwidth factor of a ring all-reduce over `n` ranks: each byte crosses the bus 2(n−1)/n
/// times.
pub fn allreduce_bus_factor(n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    2.0 * (n as f64 - 1.0) / n as f64
}

/// All-reduces an f32 buffer of `bytes` (rounded down to whole floats, at least one) `iters`
/// times after one warm-up and reports the bus bandwidth. Collective: every rank must call it with
/// the same arguments.
pub fn bandwidth_probe(
    pg: &ProcessGroup,
    bytes: usize,
    iters: usize,
) -> Result<BusBandwidth, DistError> {
    const OP: &str = "bandwidth_probe";
    if iters == 0 {
        return Err(DistError::invalid(OP, "iters must be at least 1"));
    }
    let numel = (bytes / 4).max(1);
    let device = pg.device();
    let mut buf = Tensor::ones([numel as i64], (Kind::Float, device));
    pg.all_reduce_sum(&mut buf)?;
    sync(device);
    pg.barrier()?;
    let start = Instant::now();
    for _ in 0..iters {
        pg.all_reduce_sum(&mut buf)?;
    }
    sync(device);
    let local = start.elapsed().as_secs_f64() / iters as f64;
    // Average the per-rank times so every rank reports the same figure.
    let mut t = Tensor::from_slice(&[local]).to_device(device);
    pg.all_reduce_sum(&mut t)?;
    let sum = t.double_value(&[0]);
    let seconds_per_iter = sum / pg.world_size() as f64;
    let bytes = numel * 4;
    if !(seconds_per_iter.is_finite() && seconds_per_iter > 0.0) {
        return Err(DistError::Collective {
            rank: pg.rank(),
            op: OP,
            message: format!("measured a non-positive time per iteration ({seconds_per_iter} s)"),
        });
    }
    let algo_gbps = bytes as f64 / seconds_per_iter / 1e9;
    Ok(BusBandwidth {
        bytes,
        iters,
        world_size: pg.world_size(),
        seconds_per_iter,
        algo_gbps,
        bus_gbps: algo_gbps * allreduce_bus_factor(pg.world_size()),
    })
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::allreduce_bus_factor;

    #[test]
    fn bus_factor_matches_nccl_tests() {
        assert_eq!(allreduce_bus_factor(1), 0.0);
        assert_eq!(allreduce_bus_factor(2), 1.0);
        assert!((allreduce_bus_factor(8) - 1.75).abs() < 1e-12);
    }
}
