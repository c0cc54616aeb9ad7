//! [`ProcessGroup`]: a c10d process group (Gloo for CPU tensors, NCCL for CUDA tensors) with
//! blocking, in-place collectives on tch tensors.
//!
//! Collectives must be called in the same order on every rank (c10d's rule). Each one blocks until
//! it completes on this rank, fails, or runs past the timeout given at construction; a failure is a
//! [`DistError::Collective`] naming this rank and the operation. After a failure the group is
//! broken (a peer is gone); drop it and exit with [`DistError::exit_code`].

use std::ffi::CString;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::rc::Rc;

use tch::{Device, Tensor};

use crate::error::DistError;
use crate::ffi;
use crate::rendezvous::{rendezvous, RendezvousOptions, Store};

/// Which c10d backend a group runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Gloo,
    Nccl,
}

/// A c10d process group. `Send` (it can move to another thread) but not `Sync`: collectives are
/// issued from one thread, in the same order on every rank. Dropping it destroys the group.
pub struct ProcessGroup {
    raw: NonNull<ffi::RawGroup>,
    // Dropped after `raw` (see Drop): the backend still references the store.
    store: Option<Store>,
    rank: usize,
    world_size: usize,
    device: Device,
    backend: Backend,
}

// SAFETY: the c10d backend is not tied to the creating thread; `ProcessGroup` is !Sync, so calls
// never race.
unsafe impl Send for ProcessGroup {}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `raw` came from the shim and is freed exactly once, before the store.
        unsafe { ffi::lf_dist_group_free(self.raw.as_ptr()) };
        drop(self.store.take());
    }
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("device", &self.device)
            .field("backend", &self.backend)
            .finish()
    }
}

impl ProcessGroup {
    /// Meets the other ranks (see [`RendezvousOptions`]) and creates the group for tensors on
    /// `device`: Gloo for `Device::Cpu`, NCCL for `Device::Cuda(i)` (feature `nccl`). Both the
    /// rendezvous and every later collective are bounded by `opts.timeout`.
    ///
    /// Gloo binds to: the interface in `GLOO_SOCKET_IFNAME` if set (PyTorch's variable), else
    /// 127.0.0.1 when the master address is loopback, else the address this host's name resolves
    /// to (a pod's IP in Kubernetes).
    pub fn new(opts: &RendezvousOptions, device: Device) -> Result<Self, DistError> {
        let backend =
            match device {
                Device::Cpu => Backend::Gloo,
                Device::Cuda(_) if cfg!(feature = "nccl") => Backend::Nccl,
                Device::Cuda(_) => return Err(DistError::Unsupported(
                    "CUDA tensors need ProcessGroupNCCL: build lf-dist with the `nccl` feature \
                     against the cuda flavour of libtorch (scripts/install-libtorch.sh cuda)"
                        .into(),
                )),
                other => {
                    return Err(DistError::Unsupported(format!(
                        "no c10d backend for device {other:?}"
                    )))
                }
            };
        let store = rendezvous(opts)?;
        let timeout_ms = opts.timeout.as_millis().clamp(1, i64::MAX as u128) as i64;
        let mut raw = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        let status = match (backend, device) {
            (Backend::Nccl, Device::Cuda(index)) => {
                if std::env::var_os("TORCH_NCCL_BLOCKING_WAIT").is_none() {
                    // Makes NCCL's wait() throw on a timeout or a dead peer (turned into a
                    // DistError here) instead of the watchdog tearing the process down.
                    std::env::set_var("TORCH_NCCL_BLOCKING_WAIT", "1");
                }
                // SAFETY: the store is live; out-pointers are valid.
                unsafe {
                    ffi::lf_dist_group_new_nccl(
                        store.as_ptr(),
                        opts.rank as i32,
                        opts.world_size as i32,
                        timeout_ms,
                        index as i64,
                        &mut raw,
                        &mut err,
                    )
                }
            }
            _ => {
                let (iface, hostname) = gloo_device(opts);
                let iface = CString::new(iface)
                    .map_err(|_| DistError::invalid("GLOO_SOCKET_IFNAME", "contains a NUL byte"))?;
                let hostname = CString::new(hostname)
                    .map_err(|_| DistError::invalid("rendezvous options", "NUL byte"))?;
                // SAFETY: the store is live; C strings and out-pointers are valid.
                unsafe {
                    ffi::lf_dist_group_new_gloo(
                        store.as_ptr(),
                        opts.rank as i32,
                        opts.world_size as i32,
                        timeout_ms,
                        iface.as_ptr(),
                        hostname.as_ptr(),
                        &mut raw,
                        &mut err,
                    )
                }
            }
        };
        let op = match backend {
            Backend::Gloo => "creating the Gloo process group",
            Backend::Nccl => "creating the NCCL process group",
        };
        if status != ffi::STATUS_OK {
            return Err(DistError::Collective {
                rank: opts.rank,
                op,
                // SAFETY: err was set by the shim.
                message: unsafe { ffi::take_error(err) },
            });
        }
        let raw = NonNull::new(raw).ok_or_else(|| DistError::Collective {
            rank: opts.rank,
            op,
            message: "the shim returned no group".into(),
        })?;
        Ok(ProcessGroup {
            raw,
            store: Some(store),
            rank: opts.rank,
            world_size: opts.world_size,
            device,
            backend,
        })
    }

    /// This process' rank in the group.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks in the group.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The device whose tensors this group reduces.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The c10d backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Sums `t` over all ranks, in place (every rank ends with the sum).
    pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<(), DistError> {
        self.all_reduce_sum_async(t)?.wait()
    }

    /// Sums `input` (flat, `world_size * shard` elements) over all ranks and leaves shard
    /// `rank` of the sum (elements `rank*shard..(rank+1)*shard`) in `output` (`shard` elements).
    pub fn reduce_scatter_sum(&self, input: &Tensor, output: &mut Tensor) -> Result<(), DistError> {
        self.reduce_scatter_sum_async(input, output)?.wait()
    }

    /// Concatenates every rank's `input` (flat, `shard` elements) in rank order into `output`
    /// (flat, `world_size * shard` elements).
    pub fn all_gather(&self, input: &Tensor, output: &mut Tensor) -> Result<(), DistError> {
        self.all_gather_async(input, output)?.wait()
    }

    /// Copies `root`'s `t` into `t` on every rank, in place.
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<(), DistError> {
        self.broadcast_async(t, root)?.wait()
    }

    /// Starts [`all_reduce_sum`](Self::all_reduce_sum) and returns at once; the tensor stays
    /// borrowed until the returned [`PendingWork`] is waited on (or dropped, which also waits).
    /// Use it to overlap communication with computation (gradient buckets, ZeRO-3 prefetch).
    pub fn all_reduce_sum_async<'a>(
        &'a self,
        t: &'a mut Tensor,
    ) -> Result<PendingWork<'a>, DistError> {
        const OP: &str = "all_reduce_sum";
        self.check_tensor(OP, "tensor", t)?;
        let ptr = t.as_mut_ptr();
        // SAFETY: live group, valid tensor pointer.
        self.start(OP, |out, err| unsafe {
            ffi::lf_dist_all_reduce_sum_start(self.raw.as_ptr(), ptr, out, err)
        })
    }

    /// Starts [`reduce_scatter_sum`](Self::reduce_scatter_sum); see
    /// [`all_reduce_sum_async`](Self::all_reduce_sum_async).
    pub fn reduce_scatter_sum_async<'a>(
        &'a self,
        input: &'a Tensor,
        output: &'a mut Tensor,
    ) -> Result<PendingWork<'a>, DistError> {
        const OP: &str = "reduce_scatter_sum";
        self.check_tensor(OP, "input", input)?;
        self.check_tensor(OP, "output", output)?;
        self.check_pair(OP, output, input)?;
        let (inp, outp) = (input.as_ptr(), output.as_mut_ptr());
        // SAFETY: live group, valid tensor pointers.
        self.start(OP, |out, err| unsafe {
            ffi::lf_dist_reduce_scatter_sum_start(self.raw.as_ptr(), inp, outp, out, err)
        })
    }

    /// Starts [`all_gather`](Self::all_gather); see
    /// [`all_reduce_sum_async`](Self::all_reduce_sum_async).
    pub fn all_gather_async<'a>(
        &'a self,
        input: &'a Tensor,
        output: &'a mut Tensor,
    ) -> Result<PendingWork<'a>, DistError> {
        const OP: &str = "all_gather";
        self.check_tensor(OP, "input", input)?;
        self.check_tensor(OP, "output", output)?;
        self.check_pair(OP, input, output)?;
        let (inp, outp) = (input.as_ptr(), output.as_mut_ptr());
        // SAFETY: live group, valid tensor pointers.
        self.start(OP, |out, err| unsafe {
            ffi::lf_dist_all_gather_start(self.raw.as_ptr(), inp, outp, out, err)
        })
    }

    /// Starts an [`all_gather`](Self::all_gather) that owns its tensors and keeps the group alive,
    /// so the handle can be stored and waited on later (ZeRO-3 prefetches the next layer this
    /// way). [`OwnedWork::wait`] returns `output`.
    pub fn all_gather_owned(
        group: &Rc<ProcessGroup>,
        input: Tensor,
        mut output: Tensor,
    ) -> Result<OwnedWork, DistError> {
        const OP: &str = "all_gather";
        group.check_tensor(OP, "input", &input)?;
        group.check_tensor(OP, "output", &output)?;
        group.check_pair(OP, &input, &output)?;
        let (inp, outp) = (input.as_ptr(), output.as_mut_ptr());
        // SAFETY: live group, valid tensor pointers; the tensors and the group are kept alive by
        // the returned handle until the work has been waited on.
        let raw = group.start_raw(OP, |out, err| unsafe {
            ffi::lf_dist_all_gather_start(group.raw.as_ptr(), inp, outp, out, err)
        })?;
        Ok(OwnedWork::new(group, OP, raw, output, Some(input)))
    }

    /// Starts an [`all_reduce_sum`](Self::all_reduce_sum) of `t` that owns it (see
    /// [`all_gather_owned`](Self::all_gather_owned)): gradient buckets reduced while backward
    /// goes on. [`OwnedWork::wait`] returns the sum.
    pub fn all_reduce_sum_owned(
        group: &Rc<ProcessGroup>,
        mut t: Tensor,
    ) -> Result<OwnedWork, DistError> {
        const OP: &str = "all_reduce_sum";
        group.check_tensor(OP, "tensor", &t)?;
        let ptr = t.as_mut_ptr();
        // SAFETY: live group, valid tensor pointer, kept alive by the returned handle.
        let raw = group.start_raw(OP, |out, err| unsafe {
            ffi::lf_dist_all_reduce_sum_start(group.raw.as_ptr(), ptr, out, err)
        })?;
        Ok(OwnedWork::new(group, OP, raw, t, None))
    }

    /// Starts a [`reduce_scatter_sum`](Self::reduce_scatter_sum) that owns its tensors (see
    /// [`all_gather_owned`](Self::all_gather_owned)). [`OwnedWork::wait`] returns `output`, this
    /// rank's shard of the sum.
    pub fn reduce_scatter_sum_owned(
        group: &Rc<ProcessGroup>,
        input: Tensor,
        mut output: Tensor,
    ) -> Result<OwnedWork, DistError> {
        const OP: &str = "reduce_scatter_sum";
        group.check_tensor(OP, "input", &input)?;
        group.check_tensor(OP, "output", &output)?;
        group.check_pair(OP, &output, &input)?;
        let (inp, outp) = (input.as_ptr(), output.as_mut_ptr());
        // SAFETY: live group, valid tensor pointers, kept alive by the returned handle.
        let raw = group.start_raw(OP, |out, err| unsafe {
            ffi::lf_dist_reduce_scatter_sum_start(group.raw.as_ptr(), inp, outp, out, err)
        })?;
        Ok(OwnedWork::new(group, OP, raw, output, Some(input)))
    }

    /// Starts [`broadcast`](Self::broadcast); see
    /// [`all_reduce_sum_async`](Self::all_reduce_sum_async).
    pub fn broadcast_async<'a>(
        &'a self,
        t: &'a mut Tensor,
        root: usize,
    ) -> Result<PendingWork<'a>, DistError> {
        const OP: &str = "broadcast";
        if root >= self.world_size {
            return Err(DistError::invalid(
                OP,
                format!("root {root} is not below world_size {}", self.world_size),
            ));
        }
        self.check_tensor(OP, "tensor", t)?;
        let ptr = t.as_mut_ptr();
        // SAFETY: live group, valid tensor pointer.
        self.start(OP, |out, err| unsafe {
            ffi::lf_dist_broadcast_start(self.raw.as_ptr(), ptr, root as i32, out, err)
        })
    }

    fn start<'a>(
        &'a self,
        op: &'static str,
        f: impl FnOnce(*mut *mut ffi::RawWork, *mut *mut std::ffi::c_char) -> std::ffi::c_int,
    ) -> Result<PendingWork<'a>, DistError> {
        let raw = self.start_raw(op, f)?;
        Ok(PendingWork {
            raw: Some(raw),
            op,
            rank: self.rank,
            _borrow: PhantomData,
        })
    }

    fn start_raw(
        &self,
        op: &'static str,
        f: impl FnOnce(*mut *mut ffi::RawWork, *mut *mut std::ffi::c_char) -> std::ffi::c_int,
    ) -> Result<NonNull<ffi::RawWork>, DistError> {
        let mut raw = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        if f(&mut raw, &mut err) != ffi::STATUS_OK {
            return Err(DistError::Collective {
                rank: self.rank,
                op,
                // SAFETY: err was set by the shim.
                message: unsafe { ffi::take_error(err) },
            });
        }
        NonNull::new(raw).ok_or_else(|| DistError::Collective {
            rank: self.rank,
            op,
            message: "the shim returned no work handle".into(),
        })
    }

    /// Returns once every rank has entered the barrier.
    pub fn barrier(&self) -> Result<(), DistError> {
        // SAFETY: live group.
        self.call("barrier", |err| unsafe {
            ffi::lf_dist_barrier(self.raw.as_ptr(), err)
        })
    }

    fn call(
        &self,
        op: &'static str,
        f: impl FnOnce(*mut *mut std::ffi::c_char) -> std::ffi::c_int,
    ) -> Result<(), DistError> {
        let mut err = std::ptr::null_mut();
        if f(&mut err) == ffi::STATUS_OK {
            return Ok(());
        }
        Err(DistError::Collective {
            rank: self.rank,
            op,
            // SAFETY: err was set by the shim.
            message: unsafe { ffi::take_error(err) },
        })
    }

    fn check_tensor(&self, op: &'static str, what: &str, t: &Tensor) -> Result<(), DistError> {
        if !t.defined() {
            return Err(DistError::invalid(
                op,
                format!("{what} is an undefined tensor"),
            ));
        }
        if t.device() != self.device {
            return Err(DistError::invalid(
                op,
                format!(
                    "{what} is on {:?} but the group reduces {:?} tensors",
                    t.device(),
                    self.device
                ),
            ));
        }
        if !t.is_contiguous() {
            return Err(DistError::invalid(
                op,
                format!("{what} must be contiguous (call .contiguous())"),
            ));
        }
        Ok(())
    }

    /// `small` holds one shard, `large` all `world_size` shards, same dtype.
    fn check_pair(
        &self,
        op: &'static str,
        small: &Tensor,
        large: &Tensor,
    ) -> Result<(), DistError> {
        if small.kind() != large.kind() {
            return Err(DistError::invalid(
                op,
                format!(
                    "dtype mismatch: shard {:?}, full {:?}",
                    small.kind(),
                    large.kind()
                ),
            ));
        }
        let (s, l) = (small.numel(), large.numel());
        if s * self.world_size != l {
            return Err(DistError::invalid(
                op,
                format!(
                    "the full tensor must have world_size × shard = {} × {s} = {} elements, it has {l}",
                    self.world_size,
                    s * self.world_size
                ),
            ));
        }
        Ok(())
    }
}

/// An in-flight collective. [`wait`](Self::wait) blocks until it completes on this rank (bounded by
/// the group's timeout) and reports its error; dropping it without waiting also waits (and drops
/// the error), so the borrowed tensors are never released while c10d still writes to them.
#[must_use = "a collective must be waited on; dropping the handle blocks until it completes"]
pub struct PendingWork<'a> {
    raw: Option<NonNull<ffi::RawWork>>,
    op: &'static str,
    rank: usize,
    _borrow: PhantomData<&'a mut Tensor>,
}

impl PendingWork<'_> {
    /// Waits for completion; a failure names this rank and the operation.
    pub fn wait(mut self) -> Result<(), DistError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), DistError> {
        let Some(raw) = self.raw.take() else {
            return Ok(());
        };
        let mut err = std::ptr::null_mut();
        // SAFETY: `raw` is a live work handle, waited on and freed exactly once.
        let status = unsafe { ffi::lf_dist_work_wait(raw.as_ptr(), &mut err) };
        let result = if status == ffi::STATUS_OK {
            Ok(())
        } else {
            Err(DistError::Collective {
                rank: self.rank,
                op: self.op,
                // SAFETY: err was set by the shim.
                message: unsafe { ffi::take_error(err) },
            })
        };
        // SAFETY: see above.
        unsafe { ffi::lf_dist_work_free(raw.as_ptr()) };
        result
    }
}

impl Drop for PendingWork<'_> {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A collective in flight that owns its tensors and a handle on its group
/// ([`ProcessGroup::all_gather_owned`], [`ProcessGroup::all_reduce_sum_owned`],
/// [`ProcessGroup::reduce_scatter_sum_owned`]). Dropping it waits for the work first (field
/// order).
#[must_use = "a collective must be waited on; dropping the handle blocks until it completes"]
pub struct OwnedWork {
    work: PendingWork<'static>,
    output: Tensor,
    _input: Option<Tensor>,
    _group: Rc<ProcessGroup>,
}

/// The name ZeRO-3's prefetch knows its handles by.
pub type OwnedGather = OwnedWork;

impl OwnedWork {
    fn new(
        group: &Rc<ProcessGroup>,
        op: &'static str,
        raw: NonNull<ffi::RawWork>,
        output: Tensor,
        input: Option<Tensor>,
    ) -> Self {
        OwnedWork {
            work: PendingWork {
                raw: Some(raw),
                op,
                rank: group.rank,
                _borrow: PhantomData,
            },
            output,
            _input: input,
            _group: group.clone(),
        }
    }

    /// Waits for completion and returns the tensor the collective wrote (the gathered tensor,
    /// the sum, or this rank's shard of the sum).
    pub fn wait(self) -> Result<Tensor, DistError> {
        let OwnedWork { work, output, .. } = self;
        work.wait()?;
        Ok(output)
    }
}

/// Gloo's transport device: (interface, hostname); at most one non-empty, both empty = Gloo's
/// default (the address this host's name resolves to).
fn gloo_device(opts: &RendezvousOptions) -> (String, String) {
    if let Ok(iface) = std::env::var("GLOO_SOCKET_IFNAME") {
        // PyTorch accepts a comma-separated list; one device is enough for our group.
        if let Some(first) = iface.split(',').map(str::trim).find(|s| !s.is_empty()) {
            return (first.to_string(), String::new());
        }
    }
    if opts.is_loopback() {
        return (String::new(), "127.0.0.1".to_string());
    }
    (String::new(), String::new())
}
