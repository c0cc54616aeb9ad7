//! The checkpoints of recomputed decoder layers (each layer's input, kept for its recomputation
//! in backward), on the device or, under `offload_activations`, in host memory.
//!
//! Offloaded, a checkpoint is copied to host memory as soon as its layer has run forward (into
//! pinned memory, asynchronously, on a GPU; the device copy is then free once the next layer has
//! run). In backward, taking layer `i`'s checkpoint brings it back and at once starts bringing
//! back layer `i − 1`'s, so that at most two checkpoints are on the device at a time (the one
//! being recomputed and the next). On the CPU the same path runs with plain copies: the same
//! order, the same accounting ([`OffloadStats`]), so CI checks it.
//!
//! On CUDA the copies are non-blocking and from/to pinned memory, but they are issued on the
//! compute stream (tch reaches no side stream): they run between the layers' kernels instead of
//! beside them.

use tch::{Device, Tensor};

/// What the last training pass did with its checkpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadStats {
    /// Host bytes the checkpoints took at their peak.
    pub host_bytes: u64,
    /// Checkpoints copied to host memory.
    pub copies_out: u64,
    /// Checkpoints copied back to the device.
    pub copies_in: u64,
    /// The most checkpoints held on the device (as the store's own tensors) at once.
    pub device_peak: u64,
}

/// The recomputed layers' checkpoints of one training pass, indexed by layer from 0.
pub(crate) struct Checkpoints {
    offload: bool,
    device: Device,
    saved: Vec<Tensor>,
    /// Layer `i − 1`'s checkpoint, already on its way back while layer `i` is recomputed.
    prefetched: Option<(usize, Tensor)>,
    stats: OffloadStats,
}

fn bytes(t: &Tensor) -> u64 {
    t.numel() as u64 * t.kind().elt_size_in_bytes() as u64
}

impl Checkpoints {
    pub(crate) fn new(offload: bool, device: Device) -> Self {
        Checkpoints {
            offload,
            device,
            saved: Vec::new(),
            prefetched: None,
            stats: OffloadStats::default(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.saved.len()
    }

    /// Keeps `x` (detached) as the next layer's checkpoint.
    pub(crate) fn push(&mut self, x: &Tensor) {
        let x = x.detach();
        if !self.offload {
            self.saved.push(x);
            self.stats.device_peak = self.stats.device_peak.max(self.saved.len() as u64);
            return;
        }
        let host = match self.device {
            Device::Cpu => x.copy(),
            device => {
                let host = Tensor::empty(x.size(), (x.kind(), Device::Cpu)).pin_memory(device);
                let _ = x.internal_copy_from(&host, true);
                host
            }
        };
        self.stats.copies_out += 1;
        self.stats.host_bytes += bytes(&host);
        self.saved.push(host);
    }

    /// Layer `i`'s checkpoint on the device; offloaded, starts bringing back layer `i − 1`'s and
    /// frees layer `i`'s host copy. Layers are taken from the top down.
    pub(crate) fn take(&mut self, i: usize) -> Tensor {
        if !self.offload {
            return self.saved[i].shallow_clone();
        }
        let current = match self.prefetched.take() {
            Some((j, t)) if j == i => t,
            _ => self.fetch(i),
        };
        self.saved[i] = Tensor::new();
        let on_device = if i > 0 {
            self.prefetched = Some((i - 1, self.fetch(i - 1)));
            2
        } else {
            1
        };
        self.stats.device_peak = self.stats.device_peak.max(on_device);
        current
    }

    fn fetch(&mut self, i: usize) -> Tensor {
        self.stats.copies_in += 1;
        let host = &self.saved[i];
        match self.device {
            Device::Cpu => host.copy(),
            device => host.to_device_(device, host.kind(), true, false),
        }
    }

    pub(crate) fn stats(&self) -> OffloadStats {
        self.stats
    }
}
