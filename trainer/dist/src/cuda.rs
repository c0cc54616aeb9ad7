//! CUDA caching allocator statistics (the numbers behind `torch.cuda.max_memory_allocated`), for
//! checking measured GPU memory against the planner. Available with the `nccl` feature; without
//! it (CPU builds) they report `None` / an error.

use crate::error::DistError;
use crate::ffi;

/// Peak bytes the CUDA caching allocator has handed out on `device` since process start or the
/// last [`cuda_reset_peak_stats`]. `None` without the `nccl` feature or when the query fails
/// (e.g. no such device).
pub fn cuda_peak_allocated_bytes(device: i64) -> Option<u64> {
    if !cfg!(feature = "nccl") {
        return None;
    }
    let mut out = 0u64;
    let mut err = std::ptr::null_mut();
    // SAFETY: valid out-pointers; the shim catches C++ exceptions.
    let status = unsafe { ffi::lf_dist_cuda_peak_allocated(device, &mut out, &mut err) };
    if status == ffi::STATUS_OK {
        Some(out)
    } else {
        // SAFETY: err was set by the shim.
        drop(unsafe { ffi::take_error(err) });
        None
    }
}

/// Resets the peak statistics of `device` (start of a measured window).
pub fn cuda_reset_peak_stats(device: i64) -> Result<(), DistError> {
    let mut err = std::ptr::null_mut();
    // SAFETY: valid out-pointer; the shim catches C++ exceptions.
    let status = unsafe { ffi::lf_dist_cuda_reset_peak(device, &mut err) };
    if status == ffi::STATUS_OK {
        Ok(())
    } else {
        // SAFETY: err was set by the shim.
        Err(DistError::Unsupported(unsafe { ffi::take_error(err) }))
    }
}
