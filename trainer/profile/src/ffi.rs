//! The C ABI of cpp/profiler.cpp.

use std::ffi::{c_char, c_int, c_void};

extern "C" {
    pub fn lf_profiler_start(with_cuda: c_int, error: *mut *mut c_char) -> c_int;
    pub fn lf_profiler_stop(path: *const c_char, error: *mut *mut c_char) -> c_int;
    pub fn lf_profiler_range_push(name: *const c_char) -> *mut c_void;
    pub fn lf_profiler_range_pop(range: *mut c_void);
    pub fn lf_profiler_free(s: *mut c_char);
}
