//! Ctrl-C (SIGINT) and SIGTERM for the whole `lf-operator local` process: one flag, registered
//! once, which the training gang and the server both watch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// The process's stop flag, set by the first Ctrl-C or SIGTERM (the handler is installed on the
/// first call).
pub fn stop_flag() -> Arc<AtomicBool> {
    STOP.get_or_init(|| {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
            tracing::warn!("cannot install the Ctrl-C handler: {e}");
        }
        stop
    })
    .clone()
}
