//! Faults injected at exact points, for the end-to-end suite on a real control plane: compiled in
//! only with the `fault-injection` feature (`tests/e2e/run.sh` builds with it; release images and
//! `cargo build` without it get the empty function below).
//!
//! `LF_FAULT_PANIC_ON=<namespace>/<name>`: reconciling that FineTuneJob panics, as a bug in a
//! reconciliation would; the process must exit and another replica take over.

/// The variable naming the FineTuneJob whose reconciliation panics.
pub const PANIC_ON: &str = "LF_FAULT_PANIC_ON";

/// Panics when `key` (`namespace/name`) is the FineTuneJob [`PANIC_ON`] names.
#[cfg(feature = "fault-injection")]
pub fn before_reconcile(key: &str) {
    if std::env::var(PANIC_ON).is_ok_and(|target| target == key) {
        panic!("injected fault: reconciling {key}");
    }
}

/// Without the `fault-injection` feature: nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn before_reconcile(_key: &str) {}
