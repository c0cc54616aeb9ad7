//! libtorch's profiler for lf-trainer (`profile_steps`): [`Session::start`] turns on Kineto (CPU,
//! and CUDA where the run is on a GPU), [`Session::range`] marks a step as a user-scope range
//! (`ProfilerStep#N`, as `torch.profiler` names them), and [`Session::save`] writes a
//! Chrome/Perfetto trace that TensorBoard's profiler plugin, `chrome://tracing` and
//! ui.perfetto.dev open. [`summary`] reads the trace back into a one-screen table of the top
//! operators and a hint about what dominates the step.

mod ffi;
pub mod summary;

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

/// Why the profiler could not start or save.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("libtorch's profiler: {0}")]
    Torch(String),
    #[error("the trace path {0} cannot be passed to libtorch (it holds a NUL byte)")]
    Path(PathBuf),
}

/// A running profiler (one per process). Dropped without [`Session::save`], it stops and
/// discards what it recorded.
pub struct Session {
    running: bool,
}

/// A marked range; it ends when dropped.
pub struct Range(*mut std::ffi::c_void);

impl Drop for Range {
    fn drop(&mut self) {
        // SAFETY: the pointer came from lf_profiler_range_push and is popped exactly once.
        unsafe { ffi::lf_profiler_range_pop(self.0) }
    }
}

fn take_error(error: *mut std::ffi::c_char) -> String {
    if error.is_null() {
        return "unknown error".into();
    }
    // SAFETY: the shim returns a NUL-terminated malloc'ed string, freed here once.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { ffi::lf_profiler_free(error) };
    message
}

impl Session {
    /// Starts recording CPU operators (and CUDA kernels with `cuda`).
    pub fn start(cuda: bool) -> Result<Session, ProfileError> {
        let mut error = std::ptr::null_mut();
        // SAFETY: plain call; `error` receives an owned string on failure.
        let rc = unsafe { ffi::lf_profiler_start(i32::from(cuda), &mut error) };
        if rc != 0 {
            return Err(ProfileError::Torch(take_error(error)));
        }
        Ok(Session { running: true })
    }

    /// Marks a range named `name` (e.g. `ProfilerStep#12`) until the returned guard drops.
    pub fn range(&self, name: &str) -> Range {
        let name = CString::new(name.replace('\0', " ")).unwrap_or_default();
        // SAFETY: the shim copies the name; the returned pointer is owned by the guard.
        Range(unsafe { ffi::lf_profiler_range_push(name.as_ptr()) })
    }

    /// Stops recording and writes the Chrome trace to `path`.
    pub fn save(mut self, path: &Path) -> Result<(), ProfileError> {
        self.running = false;
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| ProfileError::Path(path.to_path_buf()))?;
        stop(c_path.as_ptr())
    }
}

fn stop(path: *const std::ffi::c_char) -> Result<(), ProfileError> {
    let mut error = std::ptr::null_mut();
    // SAFETY: `path` is null or a NUL-terminated string that outlives the call.
    let rc = unsafe { ffi::lf_profiler_stop(path, &mut error) };
    if rc != 0 {
        return Err(ProfileError::Torch(take_error(error)));
    }
    Ok(())
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.running {
            let _ = stop(std::ptr::null());
        }
    }
}
