//! A checkpoint on disk: how one is written so that no crash loses it, how it is verified, listed
//! and rotated, and how an attempt cleans up after a crashed one.
//!
//! The format lives in `lf-checkpoint` (no libtorch, so it is fuzzed: `fuzz/`); this module
//! re-exports it, with the write functions taking and returning [`TrainerError`] (a failed write
//! is [`TrainerError::io`]'s: a full volume is [`TrainerError::VolumeFull`]).

use std::path::{Path, PathBuf};

pub use lf_checkpoint::{
    checkpoint_path, clean_stale, list, newest_valid, recover, rotate, staging_dir, verify,
    CheckpointError, FileDigest, Found, Invalid, Manifest, WritePhase, MARKER, PREFIX,
};

use crate::error::TrainerError;

/// Writes checkpoint `step` atomically ([`lf_checkpoint::write_atomic`]): `fill` writes the
/// files into the (temporary) directory it is given.
pub fn write_atomic(
    output_dir: &Path,
    step: u64,
    fill: impl FnOnce(&Path) -> Result<(), TrainerError>,
) -> Result<PathBuf, TrainerError> {
    lf_checkpoint::write_atomic(output_dir, step, fill)
}

/// [`write_atomic`], calling `reached` after each [`WritePhase`].
pub fn write_atomic_observed(
    output_dir: &Path,
    step: u64,
    fill: impl FnOnce(&Path) -> Result<(), TrainerError>,
    reached: impl FnMut(WritePhase),
) -> Result<PathBuf, TrainerError> {
    lf_checkpoint::write_atomic_observed(output_dir, step, fill, reached)
}
