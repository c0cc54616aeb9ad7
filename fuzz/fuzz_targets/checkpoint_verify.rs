//! `lf_checkpoint::verify` on a checkpoint directory built from arbitrary bytes: never a panic, a
//! hang or a huge allocation; whatever it accepts lists only files inside the directory (by name),
//! each a regular file with the recorded size and SHA-256. `rotate` never deletes the only
//! checkpoint there is.
//!
//! The input is segments separated by 0xFF (a byte UTF-8 text never holds): the first is the
//! completion marker, each further one (at most [`MAX_ENTRIES`]) `NAME\nCONTENT`, created as a
//! regular file `NAME` (`sub/file` creates `sub` too), or as a directory when `NAME` ends in `/`.
//! A name that would leave the directory is not created (the marker may still list it).
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

include!("scratch.rs");

const SEPARATOR: u8 = 0xFF;
const MAX_ENTRIES: usize = 8;

/// A relative path of plain components (`a`, `a/b`), the only names created or accepted.
fn plain(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\0')
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && Path::new(name)
            .components()
            .any(|c| matches!(c, Component::Normal(_)))
}

/// Creates the entry one segment describes in `dir` (failures, e.g. a name too long, leave it out).
fn create(dir: &Path, segment: &[u8]) {
    let (name, content) = match segment.iter().position(|&b| b == b'\n') {
        Some(i) => (&segment[..i], &segment[i + 1..]),
        None => (segment, &[][..]),
    };
    let Ok(name) = std::str::from_utf8(name) else {
        return;
    };
    let (name, is_dir) = match name.strip_suffix('/') {
        Some(name) => (name, true),
        None => (name, false),
    };
    if !plain(name) || name == lf_checkpoint::MARKER {
        return;
    }
    let path = dir.join(name);
    if is_dir {
        let _ = std::fs::create_dir_all(&path);
    } else if path
        .parent()
        .is_some_and(|p| std::fs::create_dir_all(p).is_ok())
    {
        let _ = std::fs::write(&path, content);
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch_dir().join("checkpoint-1");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("clear the checkpoint directory");
    }
    std::fs::create_dir(&dir).expect("create the checkpoint directory");
    let mut segments = data.split(|&b| b == SEPARATOR);
    let marker = segments.next().unwrap_or_default();
    scratch_file(&format!("checkpoint-1/{}", lf_checkpoint::MARKER), marker);
    for segment in segments.take(MAX_ENTRIES) {
        create(&dir, segment);
    }

    if let Ok(manifest) = lf_checkpoint::verify(&dir) {
        for (name, want) in &manifest.files {
            assert!(
                plain(name),
                "accepted a name outside the checkpoint: {name:?}"
            );
            let path = dir.join(name);
            let meta = std::fs::metadata(&path).expect("an accepted file exists");
            assert!(
                meta.is_file(),
                "accepted {name:?}, which is not a regular file"
            );
            let bytes = std::fs::read(&path).expect("read an accepted file");
            assert_eq!(bytes.len() as u64, want.bytes, "size of {name:?}");
            assert_eq!(sha256_hex(&bytes), want.sha256, "SHA-256 of {name:?}");
        }
    }
    assert!(
        lf_checkpoint::rotate(scratch_dir(), 1).is_empty(),
        "rotate deleted the only checkpoint"
    );
});
