//! Runs the gang's pods as local processes, follows their status, and stops them cleanly.
//!
//! Like a Job with a gang policy: when one pod fails the others are stopped. Ctrl-C (or SIGTERM)
//! is forwarded as SIGTERM, on which the trainer finishes its step, saves a checkpoint and exits;
//! running the same command again resumes from that checkpoint.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lf_api::status::FineTuneJobStatus;

use crate::pods::LocalPod;
use crate::progress::ProgressView;
use crate::status::StatusFollower;

/// How long a stopped trainer may take to write its checkpoint before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(120);

/// How the gang ended.
#[derive(Debug, Clone)]
pub struct GangOutcome {
    /// Exit code of each pod, by node rank (`None`: killed by a signal).
    pub exit_codes: Vec<Option<i32>>,
    /// The first pod that failed, if any.
    pub first_failure: Option<u32>,
    pub interrupted: bool,
    /// Each pod's log file.
    pub logs: Vec<PathBuf>,
}

impl GangOutcome {
    pub fn succeeded(&self) -> bool {
        !self.interrupted && self.exit_codes.iter().all(|c| *c == Some(0))
    }
}

/// Errors starting the processes.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("cannot start the trainer {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create log file {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Starts every pod, follows the status file into `status`, and waits for the gang to end.
pub fn run_gang(
    trainer: &Path,
    pods: &[LocalPod],
    log_dir: &Path,
    status: &mut FineTuneJobStatus,
    follower: &mut StatusFollower,
    view: &mut ProgressView,
    stop: &Arc<AtomicBool>,
) -> Result<GangOutcome, SuperviseError> {
    let mut children: Vec<(u32, Child)> = Vec::new();
    let mut logs = Vec::new();
    for pod in pods {
        let path = log_dir.join(format!("pod-{}.log", pod.node_rank));
        let log = std::fs::File::create(&path).map_err(|source| SuperviseError::Log {
            path: path.clone(),
            source,
        })?;
        let err = log.try_clone().map_err(|source| SuperviseError::Log {
            path: path.clone(),
            source,
        })?;
        let child = Command::new(trainer)
            .args(&pod.args)
            .envs(&pod.env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|source| SuperviseError::Spawn {
                program: trainer.to_path_buf(),
                source,
            })?;
        children.push((pod.node_rank, child));
        logs.push(path);
    }

    let mut exit_codes: Vec<Option<Option<i32>>> = vec![None; children.len()];
    let mut first_failure = None;
    let mut stopping_since: Option<Instant> = None;
    let mut interrupted = false;
    loop {
        if follower.poll(status) > 0 {
            if let Some(p) = &status.progress {
                view.update(p);
            }
        }
        for (i, (rank, child)) in children.iter_mut().enumerate() {
            if exit_codes[i].is_some() {
                continue;
            }
            if let Ok(Some(st)) = child.try_wait() {
                exit_codes[i] = Some(st.code());
                if st.code() != Some(0) && first_failure.is_none() && !interrupted {
                    first_failure = Some(*rank);
                }
            }
        }
        if exit_codes.iter().all(Option::is_some) {
            break;
        }
        let user_stop = stop.load(Ordering::SeqCst);
        if (user_stop || first_failure.is_some()) && stopping_since.is_none() {
            interrupted |= user_stop;
            if user_stop {
                view.println("stopping: the trainer saves a checkpoint first (run the same command again to resume)");
            }
            signal_all(&children, &exit_codes, libc::SIGTERM);
            stopping_since = Some(Instant::now());
        }
        if stopping_since.is_some_and(|t| t.elapsed() > STOP_GRACE) {
            signal_all(&children, &exit_codes, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    follower.poll(status);
    Ok(GangOutcome {
        exit_codes: exit_codes.into_iter().map(|c| c.flatten()).collect(),
        first_failure,
        interrupted: interrupted || stop.load(Ordering::SeqCst),
        logs,
    })
}

fn signal_all(children: &[(u32, Child)], exited: &[Option<Option<i32>>], signal: i32) {
    for (i, (_, child)) in children.iter().enumerate() {
        if exited[i].is_none() {
            // SAFETY: kill(2) on a child we spawned and have not reaped; no memory is touched.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }
}

/// The last `n` lines of a log file (for failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
