//! Atomic, durable file writes, and what a failed write means.
//!
//! A file is written under a temporary name next to its final one ([`temp_sibling`]), fsynced,
//! renamed into place and its directory fsynced: a crash leaves the old file or the new one, never
//! a torn one, and a file reported written survives a power cut. Temporary names carry
//! [`attempt_token`], which differs between container attempts (a PID alone repeats), so a stale
//! temporary of an earlier attempt is never mistaken for this attempt's own.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::ModelError;

/// The prefix of every temporary name this crate and the trainer create in an output directory
/// (what a start-up clean-up may remove).
pub const TEMP_PREFIX: &str = ".tmp-";

pub use crate::error::is_storage_full;

/// A token unique to this process in this container attempt: the attempt number the operator
/// renders (`LF_ATTEMPT`) when set, the PID, and the start time in nanoseconds (PIDs repeat across
/// container restarts; the time does not).
pub fn attempt_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let attempt = std::env::var(lf_api::runtime::env::ATTEMPT)
            .ok()
            .filter(|a| !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric()))
            .map(|a| format!("a{a}-"))
            .unwrap_or_default();
        format!("{attempt}{}-{nanos:x}", std::process::id())
    })
}

/// The temporary name `path` is written under: `.tmp-<file name>-<attempt token>` in the same
/// directory (a rename within one directory is atomic).
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{TEMP_PREFIX}{name}-{}", attempt_token()))
}

/// Fsyncs a file or a directory by path.
pub fn fsync_path(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Fsyncs the directory that holds `path` (so a rename or a new entry in it is durable).
pub fn fsync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => fsync_path(dir),
        _ => fsync_path(Path::new(".")),
    }
}

/// Moves the written temporary `tmp` onto `path` durably: fsync `tmp`, rename, fsync the
/// directory. On failure `tmp` is removed.
pub fn persist(tmp: &Path, path: &Path) -> io::Result<()> {
    let result = fsync_path(tmp)
        .and_then(|()| std::fs::rename(tmp, path))
        .and_then(|()| fsync_parent(path));
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let tmp = temp_sibling(path);
    let written = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| persist(&tmp, path));
    written.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        ModelError::write(path, bytes.len() as u64, source)
    })
}

/// Writes a file through `write` (given the temporary path) atomically and durably; `needed` is
/// the size it will have, for the error when the volume is full.
pub fn write_with(
    path: &Path,
    needed: u64,
    write: impl FnOnce(&Path) -> io::Result<()>,
) -> Result<(), ModelError> {
    let tmp = temp_sibling(path);
    write(&tmp)
        .and_then(|()| persist(&tmp, path))
        .map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            ModelError::write(path, needed, source)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("adapter_config.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(temp_sibling(&path)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".tmp-adapter_config.json-"));
    }

    #[test]
    fn storage_full_is_recognised_by_kind_and_errno() {
        assert!(is_storage_full(&io::Error::from_raw_os_error(28))); // ENOSPC
        assert!(is_storage_full(&io::Error::from_raw_os_error(122))); // EDQUOT
        assert!(!is_storage_full(&io::Error::from_raw_os_error(13))); // EACCES
        let e = ModelError::write(Path::new("/out/x"), 7, io::Error::from_raw_os_error(28));
        assert!(
            matches!(e, ModelError::StorageFull { needed: 7, .. }),
            "{e}"
        );
    }
}
