//! lf-dist: PyTorch's own c10d for the trainer, through a thin C++ shim (cpp/shim.cpp).
//!
//! - [`RendezvousOptions`] + [`ProcessGroup::new`]: TCPStore rendezvous (rank 0 hosts it at
//!   `MASTER_ADDR:MASTER_PORT`) that names the missing ranks when it cannot complete, then a Gloo
//!   (CPU) or NCCL (CUDA, feature `nccl`) process group.
//! - Blocking collectives on tch tensors: [`ProcessGroup::all_reduce_sum`],
//!   [`ProcessGroup::reduce_scatter_sum`], [`ProcessGroup::all_gather`],
//!   [`ProcessGroup::broadcast`], [`ProcessGroup::barrier`]; all bounded by the group's timeout,
//!   all failures are [`DistError`]s carrying the rank and the operation.
//! - [`ShardLayout`]: the even flat partitioning ZeRO stages 1–3 use with reduce-scatter/all-gather.
//! - [`bandwidth_probe`]: the pre-flight all-reduce bus bandwidth.
//! - [`launcher::run_workers`]: torchrun-like per-GPU worker processes.
//! - [`cuda_peak_allocated_bytes`]: the CUDA caching allocator's peak (feature `nccl`).
//!
//! Binaries and tests linking this crate need a RUNPATH to libtorch (see trainer/build.rs).

mod bandwidth;
mod cuda;
mod error;
mod ffi;
mod grad;
mod group;
pub mod launcher;
mod rendezvous;
mod shard;

pub use bandwidth::{allreduce_bus_factor, bandwidth_probe, BusBandwidth};
pub use cuda::{cuda_peak_allocated_bytes, cuda_reset_peak_stats};
pub use error::DistError;
pub use grad::set_grad;
pub use group::{Backend, OwnedGather, OwnedWork, PendingWork, ProcessGroup};
pub use rendezvous::RendezvousOptions;
pub use shard::ShardLayout;
