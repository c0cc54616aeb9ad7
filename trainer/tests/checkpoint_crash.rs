//! No crash loses a checkpoint: a child process writing a checkpoint with the real code is
//! SIGKILLed at each step of the atomic write, and the next attempt (the same start-up as
//! `lf-trainer train`: `resume::resolve`) always resumes from the newest complete checkpoint and
//! leaves no temporary behind. A checkpoint named for resuming that fails verification gives way
//! to the newest valid one.

use std::path::Path;
use std::process::Command;

use lf_api::training::TrainingConfig;
use lf_trainer::checkpoint::{self, WritePhase};
use lf_trainer::resume::{resolve, Start};
use lf_trainer::TrainerError;

const OUT: &str = "LF_CRASH_TEST_OUT";
const STEP: &str = "LF_CRASH_TEST_STEP";
const AT: &str = "LF_CRASH_TEST_AT";

/// Where the child kills itself: inside `fill` (one file of two written), or after a phase.
const CRASH_POINTS: [&str; 9] = [
    "fill",
    "Created",
    "Filled",
    "Marked",
    "Synced",
    "MovedAside",
    "Renamed",
    "Durable",
    "Done",
];

fn kill_self() -> ! {
    // SAFETY: kill(2) on our own PID; SIGKILL ends the process here, as a node failure would.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    unreachable!("SIGKILL returned")
}

fn write(dir: &Path, step: u64, version: &str) -> Result<(), TrainerError> {
    let io = |e| TrainerError::io("write", dir, e);
    std::fs::write(
        dir.join("adapter_model.safetensors"),
        format!("{version}{step}"),
    )
    .map_err(io)?;
    std::fs::write(
        dir.join("trainer_state.json"),
        format!("{{\"v\":\"{version}\"}}"),
    )
    .map_err(io)
}

/// The child: writes checkpoint `STEP` (version "new") and SIGKILLs itself at `AT`. Does
/// nothing when run as an ordinary test.
#[test]
fn crash_child() {
    let (Some(out), Some(step), Some(at)) = (
        std::env::var_os(OUT),
        std::env::var(STEP).ok(),
        std::env::var(AT).ok(),
    ) else {
        return;
    };
    let out = Path::new(&out);
    let step: u64 = step.parse().expect("step");
    let result = checkpoint::write_atomic_observed(
        out,
        step,
        |dir| {
            let io = |e| TrainerError::io("write", dir, e);
            std::fs::write(dir.join("adapter_model.safetensors"), format!("new{step}"))
                .map_err(io)?;
            if at == "fill" {
                kill_self();
            }
            std::fs::write(dir.join("trainer_state.json"), "{\"v\":\"new\"}").map_err(io)
        },
        |phase: WritePhase| {
            if format!("{phase:?}") == at {
                kill_self();
            }
        },
    );
    result.expect("write");
    panic!("no crash at {at}");
}

fn prepare(out: &Path) {
    for step in [2, 4] {
        checkpoint::write_atomic(out, step, |d| write(d, step, "old")).unwrap();
    }
    // An earlier attempt's staging directory and half-written checkpoint (its PID was ours).
    std::fs::create_dir_all(out.join(".optimizer-shards-6")).unwrap();
    let stale = out.join(format!(".tmp-checkpoint-6-{}", std::process::id()));
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("adapter_model.safetensors"), "half").unwrap();
}

fn crash_writing(out: &Path, step: u64, at: &str) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(OUT, out)
        .env(STEP, step.to_string())
        .env(AT, at)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the child should die by SIGKILL at {at}: {status:?}"
    );
}

fn next_attempt(out: &Path) -> (u64, String) {
    let cfg = TrainingConfig {
        resume_from_checkpoint: Some("auto".into()),
        ..TrainingConfig::default()
    };
    let Start::Resume(dir) = resolve(&cfg, out, true).unwrap() else {
        panic!("no checkpoint to resume from in {}", out.display());
    };
    let manifest = checkpoint::verify(&dir).expect("the resumed checkpoint verifies");
    let weights = std::fs::read_to_string(dir.join("adapter_model.safetensors")).unwrap();
    (manifest.step, weights)
}

fn leftovers(out: &Path) -> Vec<String> {
    std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn sigkill_at_every_step_of_a_new_checkpoint_loses_nothing() {
    let renamed = CRASH_POINTS.iter().position(|p| *p == "Renamed").unwrap();
    // Nothing is moved aside when no checkpoint of the step exists.
    let points = CRASH_POINTS
        .iter()
        .enumerate()
        .filter(|(_, p)| **p != "MovedAside");
    for (i, at) in points {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        prepare(out);
        crash_writing(out, 6, at);
        let (step, weights) = next_attempt(out);
        let want = if i >= renamed {
            (6, "new6")
        } else {
            (4, "old4")
        };
        assert_eq!((step, weights.as_str()), want, "crash at {at}");
        assert!(
            leftovers(out).is_empty(),
            "crash at {at}: {:?}",
            leftovers(out)
        );
        assert!(checkpoint::verify(&out.join("checkpoint-2")).is_ok());
    }
}

#[test]
fn sigkill_at_every_step_of_replacing_a_checkpoint_loses_nothing() {
    let renamed = CRASH_POINTS.iter().position(|p| *p == "Renamed").unwrap();
    for (i, at) in CRASH_POINTS.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        prepare(out);
        // checkpoint-4 exists: a resumed run saves step 4 again.
        crash_writing(out, 4, at);
        let (step, weights) = next_attempt(out);
        let want = if i >= renamed { "new4" } else { "old4" };
        assert_eq!((step, weights.as_str()), (4, want), "crash at {at}");
        assert!(
            leftovers(out).is_empty(),
            "crash at {at}: {:?}",
            leftovers(out)
        );
    }
}

#[test]
fn a_corrupt_resume_checkpoint_falls_back_to_the_newest_valid_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    prepare(out);
    checkpoint::write_atomic(out, 6, |d| write(d, 6, "old")).unwrap();
    // The status names checkpoint-6, whose weights were damaged since.
    std::fs::write(out.join("checkpoint-6/adapter_model.safetensors"), "0ld6").unwrap();
    let named = TrainingConfig {
        resume_from_checkpoint: Some(out.join("checkpoint-6").display().to_string()),
        ..TrainingConfig::default()
    };
    assert_eq!(
        resolve(&named, out, true).unwrap().checkpoint(),
        Some(out.join("checkpoint-4").as_path())
    );
    // A named checkpoint that was never completed (no marker) likewise.
    std::fs::remove_file(out.join("checkpoint-4").join(checkpoint::MARKER)).unwrap();
    let named = TrainingConfig {
        resume_from_checkpoint: Some("checkpoint-4".into()),
        ..TrainingConfig::default()
    };
    assert_eq!(
        resolve(&named, out, true).unwrap().checkpoint(),
        Some(out.join("checkpoint-2").as_path())
    );
}
