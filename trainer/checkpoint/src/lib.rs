//! lf-trainer's on-disk checkpoint format: how a checkpoint is written so that no crash loses it,
//! how it is verified, listed and rotated, and how an attempt cleans up after a crashed one; and
//! the durable file writes ([`durable`]) it and the model's exports rest on. No libtorch: what a
//! checkpoint holds is the caller's (`fill`), so this crate builds (and is fuzzed) on its own.
//!
//! A checkpoint is `output_dir/checkpoint-N`. It is written into a hidden temporary directory
//! next to it (`.tmp-checkpoint-N-<attempt token>`); every file is fsynced, then a completion
//! marker ([`MARKER`]) listing each file with its size and SHA-256 is written and fsynced, the
//! directory is fsynced, renamed to its final name and the parent directory fsynced. A directory
//! without a marker, or whose files do not match the marker, is incomplete or corrupt and is never
//! resumed from.
//!
//! Replacing a checkpoint of the same step never deletes the old one before the new one is in
//! place: the old one is renamed aside (`.tmp-replaced-checkpoint-N-<token>`), the new one renamed
//! in, then the old one removed. A crash between the two renames leaves the old one aside, which
//! [`recover`] puts back. Temporary names carry [`attempt_token`] (a PID alone repeats across
//! container attempts); what an earlier attempt left is removed by [`clean_stale`] at start.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use lf_data::files::{confined_join, open_regular, read_regular, FileError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod durable;
mod error;

use durable::{attempt_token, fsync_path, TEMP_PREFIX};
pub use error::CheckpointError;

/// The completion marker's file name.
pub const MARKER: &str = "checkpoint_complete.json";
/// Prefix of checkpoint directories (Hugging Face's naming).
pub const PREFIX: &str = "checkpoint-";
/// Prefix of the directory a checkpoint is written in.
const WRITING_PREFIX: &str = ".tmp-checkpoint-";
/// Prefix of a replaced checkpoint moved aside.
const REPLACED_PREFIX: &str = ".tmp-replaced-checkpoint-";
/// Prefix of the directories a partitioned optimiser's ranks stage their state files in.
const STAGING_PREFIX: &str = ".optimizer-shards-";

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

/// The steps of [`write_atomic`] after which a crash may happen, in order (what a crash test
/// stops at; production passes an observer that does nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WritePhase {
    /// The temporary directory exists, empty.
    Created,
    /// `fill` wrote the files.
    Filled,
    /// Every file is fsynced and the marker written and fsynced.
    Marked,
    /// The temporary directory is fsynced.
    Synced,
    /// An existing checkpoint of the same step was renamed aside.
    MovedAside,
    /// The new checkpoint was renamed into place.
    Renamed,
    /// The parent directory is fsynced.
    Durable,
    /// The replaced checkpoint is removed.
    Done,
}

/// The path of checkpoint `step` in `output_dir`.
pub fn checkpoint_path(output_dir: &Path, step: u64) -> PathBuf {
    output_dir.join(format!("{PREFIX}{step}"))
}

/// Where the ranks of a partitioned (ZeRO) optimiser put their state files for checkpoint
/// `step` before rank 0 moves them into the checkpoint.
pub fn staging_dir(output_dir: &Path, step: u64) -> PathBuf {
    output_dir.join(format!("{STAGING_PREFIX}{step}"))
}

/// Size and SHA-256 of what `file` holds from its current position.
fn digest(mut file: File) -> std::io::Result<FileDigest> {
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

/// Writes checkpoint `step` atomically: `fill` writes the files into the (temporary) directory it
/// is given; then everything is digested, fsynced and renamed into place. An existing checkpoint
/// with the same step is replaced only once the new one is complete, and is never the only copy
/// deleted (see the module docs). `fill`'s error type is the caller's; this crate's own failures
/// are converted into it.
pub fn write_atomic<E: From<CheckpointError>>(
    output_dir: &Path,
    step: u64,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<PathBuf, E> {
    write_atomic_observed(output_dir, step, fill, |_| {})
}

/// [`write_atomic`], calling `reached` after each [`WritePhase`].
pub fn write_atomic_observed<E: From<CheckpointError>>(
    output_dir: &Path,
    step: u64,
    fill: impl FnOnce(&Path) -> Result<(), E>,
    mut reached: impl FnMut(WritePhase),
) -> Result<PathBuf, E> {
    let io = CheckpointError::io;
    std::fs::create_dir_all(output_dir).map_err(|e| io("create", output_dir, e))?;
    let tmp = output_dir.join(format!("{WRITING_PREFIX}{step}-{}", attempt_token()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io("remove", &tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io("create", &tmp, e))?;
    reached(WritePhase::Created);
    let result = (|| -> Result<PathBuf, E> {
        fill(&tmp)?;
        reached(WritePhase::Filled);
        write_marker(&tmp, step)?;
        reached(WritePhase::Marked);
        fsync_path(&tmp).map_err(|e| io("fsync", &tmp, e))?;
        reached(WritePhase::Synced);
        Ok(swap_into_place(output_dir, step, &tmp, &mut reached)?)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Fsyncs every file of `dir` and writes the marker listing them.
fn write_marker(dir: &Path, step: u64) -> Result<(), CheckpointError> {
    let io = CheckpointError::io;
    let mut files = BTreeMap::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io("list", dir, e))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        fsync_path(&path).map_err(|e| io("fsync", &path, e))?;
        let digest = File::open(&path)
            .and_then(digest)
            .map_err(|e| io("read", &path, e))?;
        files.insert(entry.file_name().to_string_lossy().into_owned(), digest);
    }
    let manifest = Manifest { step, files };
    let marker = dir.join(MARKER);
    let text = serde_json::to_string_pretty(&manifest).map_err(CheckpointError::Encode)?;
    std::fs::write(&marker, text).map_err(|e| io("write", &marker, e))?;
    fsync_path(&marker).map_err(|e| io("fsync", &marker, e))
}

/// Renames the complete `tmp` to checkpoint `step`, moving an existing one aside first.
fn swap_into_place(
    output_dir: &Path,
    step: u64,
    tmp: &Path,
    reached: &mut impl FnMut(WritePhase),
) -> Result<PathBuf, CheckpointError> {
    let io = CheckpointError::io;
    let dest = checkpoint_path(output_dir, step);
    let aside = output_dir.join(format!("{REPLACED_PREFIX}{step}-{}", attempt_token()));
    let replacing = dest.exists();
    if replacing {
        std::fs::rename(&dest, &aside).map_err(|e| io("move aside", &dest, e))?;
        reached(WritePhase::MovedAside);
    }
    if let Err(e) = std::fs::rename(tmp, &dest) {
        if replacing {
            let _ = std::fs::rename(&aside, &dest);
        }
        return Err(io("rename into place", &dest, e));
    }
    reached(WritePhase::Renamed);
    fsync_path(output_dir).map_err(|e| io("fsync", output_dir, e))?;
    reached(WritePhase::Durable);
    if replacing {
        if let Err(e) = std::fs::remove_dir_all(&aside) {
            tracing::warn!("cannot remove the replaced {}: {e}", aside.display());
        }
    }
    reached(WritePhase::Done);
    Ok(dest)
}

/// The step of a replaced checkpoint moved aside (`.tmp-replaced-checkpoint-N-<token>`).
fn replaced_step(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(REPLACED_PREFIX)?;
    rest.split('-').next()?.parse().ok()
}

/// Puts back a replaced checkpoint that a crash left aside while its replacement was not yet in
/// place. Safe for every rank to call at once (a rename either happens once or finds nothing);
/// failures are only logged.
pub fn recover(output_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(output_dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(step) = replaced_step(&name) else {
            continue;
        };
        let dest = checkpoint_path(output_dir, step);
        if !dest.exists() {
            match std::fs::rename(e.path(), &dest) {
                Ok(()) => tracing::warn!(
                    "restored {} (an earlier attempt crashed while replacing it)",
                    dest.display()
                ),
                Err(err) => tracing::debug!("not restoring {name}: {err}"),
            }
        }
    }
}

/// Removes what earlier attempts left in `output_dir`: half-written checkpoints and files
/// (`.tmp-*`), replaced checkpoints whose replacement is in place, and optimiser staging
/// directories (`.optimizer-shards-*`). Rank 0 calls it once at start, after [`recover`] and
/// before the first save: no rank of this attempt stages or writes anything before the save's
/// first barrier, so everything there belongs to an earlier attempt. Returns the removed paths.
pub fn clean_stale(output_dir: &Path) -> Vec<PathBuf> {
    recover(output_dir);
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(output_dir) else {
        return removed;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(TEMP_PREFIX) || name.starts_with(STAGING_PREFIX)) {
            continue;
        }
        if let Some(step) = replaced_step(&name) {
            if !checkpoint_path(output_dir, step).exists() {
                continue; // recover could not put it back: keep it for a person to look at.
            }
        }
        let path = e.path();
        let gone = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match gone {
            Ok(()) => removed.push(path),
            Err(err) => tracing::warn!("cannot remove the stale {}: {err}", path.display()),
        }
    }
    removed
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
    /// The marker names a file outside the checkpoint (absolute, `..`) or one that is not a
    /// regular file (a FIFO would block the verification forever).
    #[error("the completion marker lists `{file}`, which cannot be verified: {source}")]
    Refused { file: String, source: FileError },
    #[error("{file} does not match its recorded size/checksum (corrupt or modified)")]
    Mismatch { file: String },
}

fn read_marker(dir: &Path) -> Result<Manifest, Invalid> {
    let bytes = match read_regular(&dir.join(MARKER)) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Err(Invalid::NoMarker),
        Err(e) => return Err(Invalid::BadMarker(e.to_string())),
    };
    serde_json::from_slice(&bytes).map_err(|e| Invalid::BadMarker(e.to_string()))
}

/// Opens the file `name` the marker of `dir` lists: only inside `dir`, only a regular file.
fn open_listed(dir: &Path, name: &str) -> Result<File, Invalid> {
    let refused = |source| Invalid::Refused {
        file: name.to_string(),
        source,
    };
    let path = confined_join(dir, name).map_err(refused)?;
    open_regular(&path).map_err(|e| {
        if e.is_not_found() {
            Invalid::Missing {
                file: name.to_string(),
            }
        } else {
            refused(e)
        }
    })
}

/// Checks a checkpoint directory against its completion marker (sizes and SHA-256 of every file).
/// The marker is input like any other file: a name it lists is never followed out of `dir`.
pub fn verify(dir: &Path) -> Result<Manifest, Invalid> {
    let manifest = read_marker(dir)?;
    for (name, want) in &manifest.files {
        let mismatch = || Invalid::Mismatch { file: name.clone() };
        let file = open_listed(dir, name)?;
        let len = file.metadata().map_err(|_| mismatch())?.len();
        if len != want.bytes {
            return Err(mismatch());
        }
        let got = digest(file).map_err(|_| mismatch())?;
        if &got != want {
            return Err(mismatch());
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

/// Keeps the newest `limit` complete checkpoints and deletes older ones (and incomplete ones
/// older than the newest complete checkpoint). The newest complete checkpoint is never deleted.
/// "Complete" means a readable marker whose files are all there with their recorded sizes: no
/// checksum is recomputed here (rank 0 rotates while the other ranks wait at a barrier;
/// checksums are verified when resuming). Returns the deleted paths.
pub fn rotate(output_dir: &Path, limit: usize) -> Vec<PathBuf> {
    let mut deleted = Vec::new();
    let all = list(output_dir);
    let complete: Vec<&Found> = all.iter().filter(|f| is_complete(&f.path)).collect();
    let Some(newest) = complete.last().map(|f| f.step) else {
        return deleted;
    };
    let keep: Vec<u64> = complete
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
    deleted
}

/// A readable marker whose files all exist inside `dir` as regular files with their recorded
/// sizes (no checksums; `metadata` never blocks, even on a FIFO).
fn is_complete(dir: &Path) -> bool {
    read_marker(dir).is_ok_and(|m| {
        m.files.iter().all(|(name, want)| {
            confined_join(dir, name)
                .ok()
                .and_then(|path| std::fs::metadata(path).ok())
                .is_some_and(|meta| meta.is_file() && meta.len() == want.bytes)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(out: &Path, step: u64, body: &str) -> Result<PathBuf, CheckpointError> {
        write_atomic(out, step, |d| {
            std::fs::write(d.join("weights.bin"), body)
                .map_err(|e| CheckpointError::io("write", d, e))
        })
    }

    #[test]
    fn a_written_checkpoint_verifies_and_lists_its_files() {
        let out = tempfile::tempdir().unwrap();
        let dir = save(out.path(), 3, "weights 3").unwrap();
        assert_eq!(dir, checkpoint_path(out.path(), 3));
        let manifest = verify(&dir).unwrap();
        assert_eq!(manifest.step, 3);
        assert_eq!(
            manifest.files.keys().collect::<Vec<_>>(),
            ["weights.bin"],
            "the marker lists every file but itself"
        );
        assert_eq!(manifest.files["weights.bin"].bytes, 9);
        assert_eq!(newest_valid(out.path()), Some(Found { step: 3, path: dir }));
    }

    #[test]
    fn a_failed_write_names_what_failed_and_keeps_the_os_error() {
        let out = tempfile::tempdir().unwrap();
        let file = out.path().join("not-a-directory");
        std::fs::write(&file, "").unwrap();
        let err = save(&file, 1, "x").unwrap_err();
        let CheckpointError::Io { op, path, source } = &err else {
            panic!("{err}");
        };
        assert_eq!((*op, path.as_path()), ("create", file.as_path()));
        assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
    }

    #[test]
    fn fill_errors_come_back_as_they_were_and_leave_nothing_behind() {
        #[derive(Debug, PartialEq)]
        enum Caller {
            Full,
            Checkpoint(String),
        }
        impl From<CheckpointError> for Caller {
            fn from(e: CheckpointError) -> Self {
                Caller::Checkpoint(e.to_string())
            }
        }
        let out = tempfile::tempdir().unwrap();
        let err = write_atomic(out.path(), 2, |_| Err(Caller::Full)).unwrap_err();
        assert_eq!(err, Caller::Full);
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    }
}
