//! Checkpoint directories: atomic writing, verification, rotation and the choice of the one to
//! resume from.
//!
//! A checkpoint is `output_dir/checkpoint-N`. It is written into a hidden temporary directory
//! next to it; every file is fsynced, then a completion marker ([`MARKER`]) listing each file with
//! its size and SHA-256 is written and fsynced, the directory is fsynced, renamed to its final name
//! and the parent directory fsynced. A directory without a marker, or whose files do not match the
//! marker, is incomplete or corrupt and is never resumed from.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::TrainerError;

/// The completion marker's file name.
pub const MARKER: &str = "checkpoint_complete.json";
/// Prefix of checkpoint directories (Hugging Face's naming).
pub const PREFIX: &str = "checkpoint-";
const TEMP_PREFIX: &str = ".tmp-checkpoint-";

/// One file of a checkpoint, as the marker records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub bytes: u64,
    pub sha256: String,
}

/// The completion marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub step: u64,
    pub files: BTreeMap<String, FileDigest>,
}

/// A checkpoint directory found in an output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub step: u64,
    pub path: PathBuf,
}

/// The path of checkpoint `step` in `output_dir`.
pub fn checkpoint_path(output_dir: &Path, step: u64) -> PathBuf {
    output_dir.join(format!("{PREFIX}{step}"))
}

fn sha256_file(path: &Path) -> std::io::Result<FileDigest> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buf[..n]);
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(FileDigest { bytes, sha256 })
}

fn fsync_path(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// Writes checkpoint `step` atomically: `fill` writes the files into the (temporary) directory it
/// is given; then everything is digested, fsynced and renamed into place. An existing checkpoint
/// with the same step is replaced only after the new one is complete.
pub fn write_atomic(
    output_dir: &Path,
    step: u64,
    fill: impl FnOnce(&Path) -> Result<(), TrainerError>,
) -> Result<PathBuf, TrainerError> {
    std::fs::create_dir_all(output_dir).map_err(|e| TrainerError::io("create", output_dir, e))?;
    let tmp = output_dir.join(format!("{TEMP_PREFIX}{step}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainerError::io("remove", &tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainerError::io("create", &tmp, e))?;
    let result = (|| {
        fill(&tmp)?;
        let mut files = BTreeMap::new();
        let mut entries: Vec<_> = std::fs::read_dir(&tmp)
            .map_err(|e| TrainerError::io("list", &tmp, e))?
            .filter_map(|e| e.ok())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            fsync_path(&path).map_err(|e| TrainerError::io("fsync", &path, e))?;
            let digest = sha256_file(&path).map_err(|e| TrainerError::io("read", &path, e))?;
            files.insert(entry.file_name().to_string_lossy().into_owned(), digest);
        }
        let manifest = Manifest { step, files };
        let marker = tmp.join(MARKER);
        let text = serde_json::to_string_pretty(&manifest)
            .map_err(|e| TrainerError::runtime(e.to_string()))?;
        std::fs::write(&marker, text).map_err(|e| TrainerError::io("write", &marker, e))?;
        fsync_path(&marker).map_err(|e| TrainerError::io("fsync", &marker, e))?;
        fsync_path(&tmp).map_err(|e| TrainerError::io("fsync", &tmp, e))?;
        let dest = checkpoint_path(output_dir, step);
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(|e| TrainerError::io("replace", &dest, e))?;
        }
        std::fs::rename(&tmp, &dest)
            .map_err(|e| TrainerError::io("rename into place", &dest, e))?;
        fsync_path(output_dir).map_err(|e| TrainerError::io("fsync", output_dir, e))?;
        Ok(dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Why a checkpoint directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("no completion marker {MARKER} (the save did not finish)")]
    NoMarker,
    #[error("the completion marker is unreadable: {0}")]
    BadMarker(String),
    #[error("{file} is missing")]
    Missing { file: String },
    #[error("{file} does not match its recorded size/checksum (corrupt or modified)")]
    Mismatch { file: String },
}

/// Checks a checkpoint directory against its completion marker (sizes and SHA-256 of every file).
pub fn verify(dir: &Path) -> Result<Manifest, Invalid> {
    let marker = dir.join(MARKER);
    let text = match std::fs::read_to_string(&marker) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Invalid::NoMarker),
        Err(e) => return Err(Invalid::BadMarker(e.to_string())),
    };
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| Invalid::BadMarker(e.to_string()))?;
    for (name, want) in &manifest.files {
        let path = dir.join(name);
        let meta = std::fs::metadata(&path).map_err(|_| Invalid::Missing { file: name.clone() })?;
        if meta.len() != want.bytes {
            return Err(Invalid::Mismatch { file: name.clone() });
        }
        let got = sha256_file(&path).map_err(|_| Invalid::Missing { file: name.clone() })?;
        if &got != want {
            return Err(Invalid::Mismatch { file: name.clone() });
        }
    }
    Ok(manifest)
}

/// Every `checkpoint-N` directory in `output_dir`, oldest first (valid or not).
pub fn list(output_dir: &Path) -> Vec<Found> {
    let Ok(entries) = std::fs::read_dir(output_dir) else {
        return Vec::new();
    };
    let mut found: Vec<Found> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix(PREFIX)?.parse::<u64>().ok()?;
            Some(Found {
                step,
                path: e.path(),
            })
        })
        .collect();
    found.sort_by_key(|f| f.step);
    found
}

/// The newest checkpoint that verifies. Each newer one that does not is skipped with a warning
/// naming it and saying why.
pub fn newest_valid(output_dir: &Path) -> Option<Found> {
    for f in list(output_dir).into_iter().rev() {
        match verify(&f.path) {
            Ok(_) => return Some(f),
            Err(why) => tracing::warn!("skipping checkpoint {}: {why}", f.path.display()),
        }
    }
    None
}

/// Keeps the newest `limit` valid checkpoints and deletes older ones (and incomplete ones older
/// than the newest valid checkpoint, and stale temporary directories of this output directory).
/// The newest valid checkpoint is never deleted. Returns the deleted paths.
pub fn rotate(output_dir: &Path, limit: usize) -> Vec<PathBuf> {
    let mut deleted = Vec::new();
    let all = list(output_dir);
    let valid: Vec<&Found> = all.iter().filter(|f| verify(&f.path).is_ok()).collect();
    let Some(newest) = valid.last().map(|f| f.step) else {
        return deleted;
    };
    let keep: Vec<u64> = valid
        .iter()
        .rev()
        .take(limit.max(1))
        .map(|f| f.step)
        .collect();
    for f in &all {
        if f.step < newest && !keep.contains(&f.step) {
            match std::fs::remove_dir_all(&f.path) {
                Ok(()) => deleted.push(f.path.clone()),
                Err(e) => tracing::warn!("cannot delete old checkpoint {}: {e}", f.path.display()),
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(output_dir) {
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = format!("-{}", std::process::id());
            if name.starts_with(TEMP_PREFIX)
                && !name.ends_with(&ours)
                && std::fs::remove_dir_all(e.path()).is_ok()
            {
                deleted.push(e.path());
            }
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(dir: &Path, step: u64) -> PathBuf {
        write_atomic(dir, step, |d| {
            std::fs::write(d.join("weights.bin"), format!("weights {step}")).unwrap();
            std::fs::write(d.join("trainer_state.json"), "{}").unwrap();
            Ok(())
        })
        .unwrap()
    }

    #[test]
    fn atomic_write_verifies_and_detects_corruption() {
        let out = tempfile::tempdir().unwrap();
        let p = save(out.path(), 5);
        assert_eq!(p, out.path().join("checkpoint-5"));
        assert_eq!(verify(&p).unwrap().files.len(), 2);
        std::fs::write(p.join("weights.bin"), "weights 6").unwrap();
        assert!(matches!(verify(&p), Err(Invalid::Mismatch { .. })));
        std::fs::remove_file(p.join("weights.bin")).unwrap();
        assert!(matches!(verify(&p), Err(Invalid::Missing { .. })));
        std::fs::remove_file(p.join(MARKER)).unwrap();
        assert!(matches!(verify(&p), Err(Invalid::NoMarker)));
        // No temporary directory is left behind.
        let names: Vec<_> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn failed_fill_leaves_nothing() {
        let out = tempfile::tempdir().unwrap();
        let err = write_atomic(out.path(), 3, |_| {
            Err(TrainerError::runtime("disk on fire"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    }

    #[test]
    fn newest_valid_skips_corrupt_ones() {
        let out = tempfile::tempdir().unwrap();
        for s in [2, 4, 6] {
            save(out.path(), s);
        }
        std::fs::write(out.path().join("checkpoint-6/weights.bin"), "garbage!!").unwrap();
        std::fs::create_dir_all(out.path().join("checkpoint-8")).unwrap();
        assert_eq!(newest_valid(out.path()).unwrap().step, 4);
    }

    #[test]
    fn rotation_keeps_the_newest_valid() {
        let out = tempfile::tempdir().unwrap();
        for s in [1, 2, 3, 4] {
            save(out.path(), s);
        }
        // The newest one is corrupt: it must not count, and checkpoint-3 must survive.
        std::fs::remove_file(out.path().join("checkpoint-4").join(MARKER)).unwrap();
        let deleted = rotate(out.path(), 1);
        assert_eq!(deleted.len(), 2, "{deleted:?}");
        let left: Vec<u64> = list(out.path()).iter().map(|f| f.step).collect();
        assert_eq!(left, vec![3, 4]);
        save(out.path(), 5);
        rotate(out.path(), 2);
        let left: Vec<u64> = list(out.path()).iter().map(|f| f.step).collect();
        assert_eq!(left, vec![3, 5]);
    }
}
