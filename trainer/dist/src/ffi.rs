//! Raw declarations of the C++ shim (cpp/shim.cpp). Every function returns 0 on success and
//! otherwise a status with a malloc'd message in `err`, which [`take_error`] turns into a `String`.

use std::ffi::{c_char, c_int, CStr};
use torch_sys::C_tensor;

pub const STATUS_OK: c_int = 0;
pub const STATUS_RENDEZVOUS_INCOMPLETE: c_int = 2;
pub const STATUS_RENDEZVOUS_ABORTED: c_int = 3;

/// Opaque `StoreHandle` (a c10d::TCPStore).
#[repr(C)]
pub struct RawStore {
    _private: [u8; 0],
}

/// Opaque `GroupHandle` (a c10d::Backend: ProcessGroupGloo or ProcessGroupNCCL).
#[repr(C)]
pub struct RawGroup {
    _private: [u8; 0],
}

/// Opaque `WorkHandle` (an in-flight c10d::Work plus references to its tensors).
#[repr(C)]
pub struct RawWork {
    _private: [u8; 0],
}

extern "C" {
    pub fn lf_dist_free_string(s: *mut c_char);
    pub fn lf_dist_store_new(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        out: *mut *mut RawStore,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn lf_dist_store_free(store: *mut RawStore);
    pub fn lf_dist_store_arrive(
        store: *mut RawStore,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        arrived: *mut u8,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn lf_dist_group_new_gloo(
        store: *mut RawStore,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        iface: *const c_char,
        hostname: *const c_char,
        out: *mut *mut RawGroup,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn lf_dist_group_new_nccl(
        store: *mut RawStore,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        device_index: i64,
        out: *mut *mut RawGroup,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn lf_dist_group_free(group: *mut RawGroup);
    pub fn lf_dist_all_reduce_sum_start(
        group: *mut RawGroup,
        t: *mut C_tensor,
        out: *mut *mut RawWork,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn lf_dist_reduce_scatter_sum_start(
        group: *mut RawGroup,
        input: *const C_tensor,
        output: *mut C_tensor,
        out: *mut *mut RawWork,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn lf_dist_all_gather_start(
        group: *mut RawGroup,
        input: *const C_tensor,
        output: *mut C_tensor,
        out: *mut *mut RawWork,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn lf_dist_broadcast_start(
        group: *mut RawGroup,
        t: *mut C_tensor,
        root: c_int,
        out: *mut *mut RawWork,
        err: *mut *mut c_char,
    ) -> c_int;
    pub fn lf_dist_work_wait(work: *mut RawWork, err: *mut *mut c_char) -> c_int;
    pub fn lf_dist_work_free(work: *mut RawWork);
    pub fn lf_dist_barrier(group: *mut RawGroup, err: *mut *mut c_char) -> c_int;
    pub fn lf_dist_cuda_peak_allocated(device: i64, out: *mut u64, err: *mut *mut c_char) -> c_int;
    pub fn lf_dist_cuda_reset_peak(device: i64, err: *mut *mut c_char) -> c_int;
    pub fn lf_dist_set_grad(
        tensor: *mut C_tensor,
        grad: *mut C_tensor,
        err: *mut *mut c_char,
    ) -> c_int;
}

/// Takes ownership of a shim error message (null gives a generic text) and frees it.
///
/// # Safety
/// `err` must be null or a pointer the shim returned through an `err` out-parameter, not yet freed.
pub unsafe fn take_error(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown error in the c10d shim (no message)".to_string();
    }
    // One line: c10d/CUDA messages sometimes carry several.
    let message = CStr::from_ptr(err)
        .to_string_lossy()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    lf_dist_free_string(err);
    message
}
