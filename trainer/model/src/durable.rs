//! Atomic, durable file writes, and what a failed write means.
//!
//! The mechanism (temporary sibling named by [`attempt_token`], fsync, rename, fsync of the
//! directory) is `lf_checkpoint::durable`'s, shared with the checkpoint format; this module adds
//! the model's error: a failed write is [`ModelError::write`], so a full volume is
//! [`ModelError::StorageFull`] with the OS error kept.

use std::io;
use std::path::Path;

pub use lf_checkpoint::durable::{
    attempt_token, fsync_parent, fsync_path, persist, temp_sibling, TEMP_PREFIX,
};

use crate::ModelError;

pub use crate::error::is_storage_full;

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    lf_checkpoint::durable::write_atomic(path, bytes)
        .map_err(|source| ModelError::write(path, bytes.len() as u64, source))
}

/// Writes a file through `write` (given the temporary path) atomically and durably; `needed` is
/// the size it will have, for the error when the volume is full.
pub fn write_with(
    path: &Path,
    needed: u64,
    write: impl FnOnce(&Path) -> io::Result<()>,
) -> Result<(), ModelError> {
    lf_checkpoint::durable::write_with(path, write)
        .map_err(|source| ModelError::write(path, needed, source))
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
