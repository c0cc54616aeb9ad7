//! Atomic, durable file writes.
//!
//! A file is written under a temporary name next to its final one ([`temp_sibling`]), fsynced,
//! renamed into place and its directory fsynced: a crash leaves the old file or the new one, never
//! a torn one, and a file reported written survives a power cut. Temporary names carry
//! [`attempt_token`], which differs between container attempts (a PID alone repeats), so a stale
//! temporary of an earlier attempt is never mistaken for this attempt's own.
//!
//! Errors are the OS's own (`io::Error`): callers wrap them with what they were writing and
//! classify a full volume themselves (`lf_model::durable::write_atomic` does).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The prefix of every temporary name the trainer and its crates create in an output directory
/// (what a start-up clean-up may remove).
pub const TEMP_PREFIX: &str = ".tmp-";

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
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, |tmp| {
        File::create(tmp).and_then(|mut f| f.write_all(bytes))
    })
}

/// Writes a file through `write` (given the temporary path) atomically and durably. On failure
/// the temporary is removed.
pub fn write_with(path: &Path, write: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    let tmp = temp_sibling(path);
    write(&tmp)
        .and_then(|()| persist(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trainer_state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_leaves_neither_file_nor_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.bin");
        let err = write_with(&path, |tmp| {
            std::fs::write(tmp, b"half")?;
            Err(io::Error::from_raw_os_error(28)) // ENOSPC
        })
        .unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::StorageFull,
            "the OS error is kept"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn temporaries_are_hidden_siblings_named_by_the_attempt() {
        let tmp = temp_sibling(Path::new("/out/adapter_config.json"));
        assert_eq!(tmp.parent(), Some(Path::new("/out")));
        let name = tmp.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".tmp-adapter_config.json-"), "{name}");
        assert!(name.ends_with(attempt_token()), "{name}");
    }
}
