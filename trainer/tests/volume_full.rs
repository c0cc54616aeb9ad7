//! A full output volume ends training at once with its own exit code and an actionable message
//! (`OutputVolumeFull`), instead of a runtime failure retried to the same failing step. The
//! output directory is a 2 MiB tmpfs filled up (needs root, as CI runs; without `mount` the test
//! says so and passes).

mod tiny_run;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lf_api::runtime::exit_code;
use tiny_run::{stderr, trainer, write_config};

/// A mounted tmpfs, unmounted on drop.
struct Tmpfs<'a>(&'a Path);

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn mount_tmpfs<'a>(dir: &'a Path, size: &str) -> Option<Tmpfs<'a>> {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(Tmpfs(dir)),
        Ok(o) => {
            println!(
                "SKIPPED: cannot mount a tmpfs on {} ({})",
                dir.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            println!("SKIPPED: cannot run mount: {e}");
            None
        }
    }
}

/// Writes `dir/filler` until the volume refuses more.
fn fill(dir: &Path) {
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            return;
        }
    }
}

#[test]
fn a_full_output_volume_is_output_volume_full_not_a_retried_runtime_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let out = dir.path().join("out");
    let Some(_mounted) = mount_tmpfs(&out, "2m") else {
        return;
    };
    // A first run leaves the tokenised cache (and a log) on the volume, so the full volume is
    // met by the training outputs: the log, the checkpoint's weights and optimizer state.
    let o = trainer(
        &[
            "train",
            cfg.to_str().unwrap(),
            "max_steps=1",
            "save_steps=0",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    fill(&out);
    let started = Instant::now();
    let o = trainer(
        &[
            "train",
            cfg.to_str().unwrap(),
            "max_steps=4",
            "save_steps=1",
            "overwrite_output_dir=true",
        ],
        &[],
    );
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(exit_code::OUTPUT_VOLUME_FULL),
        "{err}"
    );
    let line = err
        .lines()
        .find(|l| l.contains("output volume full:"))
        .unwrap_or_else(|| panic!("no `output volume full` line: {err}"));
    println!("{line}");
    assert!(
        line.contains(&out.display().to_string()) && line.contains("free space or enlarge the PVC"),
        "{line}"
    );
    assert_eq!(
        err.matches("error: output volume full:").count(),
        1,
        "one failure, no retry: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(120), "{err}");
    // Nothing half-written is left for the next attempt to mistake for a checkpoint.
    assert!(lf_trainer::checkpoint::newest_valid(&out).is_none());
}
