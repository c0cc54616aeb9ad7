//! The checkpoints of recomputed decoder layers (each layer's input, kept for its recomputation
//! in backward), on the device or, under `offload_activations`, in host memory.
//!
//! Offloaded, a checkpoint is copied to host memory as soon as its layer has run forward (the
//! device copy is then free once the next layer has run), and copied back just before the layer
//! is recomputed in backward, its host copy freed at once: at most the checkpoint being
//! recomputed is on the device. On the CPU the same path runs with plain copies: the same order,
//! the same accounting ([`OffloadStats`]), so CI checks it.
//!
//! Host copies are ordinary (pageable) memory and the copies are synchronous, between the layers'
//! kernels. Pinned memory would copy about twice as fast, but PyTorch's pinned-memory allocator
//! rounds every block up to a power of two and keeps freed blocks cached per size, so the host
//! memory a pod needs would no longer be the checkpoints' bytes; and without a side stream (tch
//! reaches none) an asynchronous copy would not overlap compute anyway.
//!
//! Layers below the lowest trainable one are never recomputed (nothing below them needs a
//! gradient): their checkpoints are not kept at all.

use std::sync::Mutex;

use tch::{Device, Tensor};

/// What the last training pass did with its checkpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadStats {
    /// Host bytes the checkpoints took at their peak.
    pub host_bytes: u64,
}

/// The recomputed layers' checkpoints of one training pass, indexed by layer from 0; when dropped
/// it reports what it did to `sink` (on every exit of the pass).
pub(crate) struct Checkpoints<'a> {
    offload: bool,
    device: Device,
    /// The lowest layer that is recomputed; below it nothing is kept.
    lowest: usize,
    saved: Vec<Tensor>,
    stats: OffloadStats,
    sink: &'a Mutex<OffloadStats>,
}

fn bytes(t: &Tensor) -> u64 {
    t.numel() as u64 * t.kind().elt_size_in_bytes() as u64
}

impl<'a> Checkpoints<'a> {
    pub(crate) fn new(
        offload: bool,
        device: Device,
        lowest: usize,
        sink: &'a Mutex<OffloadStats>,
    ) -> Self {
        Checkpoints {
            offload,
            device,
            lowest,
            saved: Vec::new(),
            stats: OffloadStats::default(),
            sink,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.saved.len()
    }

    /// Keeps `x` (detached) as the next layer's checkpoint (nothing below the lowest recomputed
    /// layer).
    pub(crate) fn push(&mut self, x: &Tensor) {
        if self.saved.len() < self.lowest {
            self.saved.push(Tensor::new());
            return;
        }
        let x = x.detach();
        if !self.offload {
            self.saved.push(x);
            return;
        }
        let host = match self.device {
            Device::Cpu => x.copy(),
            _ => x.to_device(Device::Cpu),
        };
        self.stats.host_bytes += bytes(&host);
        self.saved.push(host);
    }

    /// Layer `i`'s checkpoint on the device (a layer from the lowest recomputed one up, taken
    /// from the top down); offloaded, its host copy is freed.
    pub(crate) fn take(&mut self, i: usize) -> Tensor {
        if !self.offload {
            return self.saved[i].shallow_clone();
        }
        let host = std::mem::replace(&mut self.saved[i], Tensor::new());
        match self.device {
            Device::Cpu => host.copy(),
            device => host.to_device(device),
        }
    }
}

impl Drop for Checkpoints<'_> {
    fn drop(&mut self) {
        if let Ok(mut stats) = self.sink.lock() {
            *stats = self.stats;
        }
    }
}
