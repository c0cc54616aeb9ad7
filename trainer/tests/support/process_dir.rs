//! A directory a test process keeps for its whole life, removed when the process exits. (A
//! `TempDir` held in a static is never dropped, so each test run would leave its directory in
//! /tmp.)

use std::path::{Path, PathBuf};
use std::sync::Mutex;

static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn remove_all() {
    if let Ok(dirs) = DIRS.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A new temporary directory that lives until the test process exits.
pub fn process_tempdir() -> &'static Path {
    let path = tempfile::tempdir().expect("a temporary directory").keep();
    let mut dirs = DIRS.lock().unwrap_or_else(|e| e.into_inner());
    if dirs.is_empty() {
        // SAFETY: registers a plain function that only touches this module's static.
        unsafe { libc::atexit(remove_all) };
    }
    dirs.push(path.clone());
    Box::leak(path.into_boxed_path())
}
