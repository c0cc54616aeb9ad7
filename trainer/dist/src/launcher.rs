//! A torchrun-like launcher: one worker process per local rank (GPU) of this node.
//!
//! Each worker gets `RANK = node_rank × nproc_per_node + local_rank`, `LOCAL_RANK`, `WORLD_SIZE =
//! nnodes × nproc_per_node`, `NODE_RANK`, `NNODES` and `NPROC_PER_NODE`, and inherits everything
//! else (`MASTER_ADDR`, `MASTER_PORT`, the config path). When one worker fails, the others get
//! SIGTERM, then SIGKILL after the grace period, and the launcher reports the failing worker's exit
//! code. SIGTERM/SIGINT sent to the launcher are forwarded to the workers (same escalation) and the
//! result is `128 + signal` (143 = `exit_code::INTERRUPTED` for SIGTERM). Workers also get
//! `PR_SET_PDEATHSIG = SIGKILL`, so they never outlive a launcher killed with SIGKILL.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lf_api::runtime::env;

use crate::error::DistError;

/// How the workers ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkersExit {
    /// The launcher's exit code: 0 if every worker succeeded; the first failing worker's code
    /// (`128 + signal` if it was killed); `128 + signal` if the launcher was signalled.
    pub code: i32,
    /// The first worker that failed, if any.
    pub first_failure: Option<WorkerFailure>,
    /// The signal (SIGTERM/SIGINT) the launcher received and forwarded, if any.
    pub signal: Option<i32>,
}

impl WorkersExit {
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

/// The worker whose failure stopped the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerFailure {
    pub local_rank: usize,
    pub rank: usize,
    /// Its exit code, or `128 + signal` when a signal killed it.
    pub code: i32,
}

/// Launcher settings beyond [`run_workers`]' arguments.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub nproc_per_node: usize,
    pub node_rank: usize,
    pub nnodes: usize,
    /// Time between SIGTERM and SIGKILL when stopping workers (default 10 s).
    pub grace_period: Duration,
    /// Extra environment for every worker.
    pub extra_env: Vec<(OsString, OsString)>,
}

/// Runs `program args` once per local rank and supervises the workers (see the module docs).
pub fn run_workers(
    nproc_per_node: usize,
    node_rank: usize,
    nnodes: usize,
    program: &Path,
    args: &[OsString],
) -> Result<WorkersExit, DistError> {
    Launcher::new(nproc_per_node, node_rank, nnodes).run(program, args)
}

/// Converts an exit status to a shell-style code (`128 + signal` for a signal death).
pub fn status_code(status: &ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

fn launch_err(message: String, source: Option<std::io::Error>) -> DistError {
    DistError::Launcher { message, source }
}

impl Launcher {
    pub fn new(nproc_per_node: usize, node_rank: usize, nnodes: usize) -> Self {
        Launcher {
            nproc_per_node,
            node_rank,
            nnodes,
            grace_period: Duration::from_secs(10),
            extra_env: Vec::new(),
        }
    }

    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    fn validate(&self) -> Result<(), DistError> {
        if self.nproc_per_node == 0 {
            return Err(launch_err("nproc_per_node must be at least 1".into(), None));
        }
        if self.nnodes == 0 || self.node_rank >= self.nnodes {
            return Err(launch_err(
                format!(
                    "node_rank {} must be below nnodes {}",
                    self.node_rank, self.nnodes
                ),
                None,
            ));
        }
        Ok(())
    }

    /// Spawns and supervises the workers; returns when all of them have exited.
    pub fn run(&self, program: &Path, args: &[OsString]) -> Result<WorkersExit, DistError> {
        self.validate()?;
        let world = self.nnodes * self.nproc_per_node;
        let _signals = SignalGuard::install()?;
        let mut workers: Vec<Worker> = Vec::with_capacity(self.nproc_per_node);
        for local_rank in 0..self.nproc_per_node {
            let rank = self.node_rank * self.nproc_per_node + local_rank;
            let mut cmd = Command::new(program);
            cmd.args(args)
                .env(env::RANK, rank.to_string())
                .env(env::LOCAL_RANK, local_rank.to_string())
                .env(env::WORLD_SIZE, world.to_string())
                .env(env::NODE_RANK, self.node_rank.to_string())
                .env(env::NNODES, self.nnodes.to_string())
                .env(env::NPROC_PER_NODE, self.nproc_per_node.to_string())
                .envs(self.extra_env.iter().map(|(k, v)| (k, v)));
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            match cmd.spawn() {
                Ok(child) => workers.push(Worker {
                    child,
                    local_rank,
                    rank,
                    status: None,
                }),
                Err(e) => {
                    stop_all(&mut workers, self.grace_period);
                    return Err(launch_err(
                        format!("starting worker {local_rank} ({})", program.display()),
                        Some(e),
                    ));
                }
            }
        }
        self.supervise(&mut workers)
    }

    fn supervise(&self, workers: &mut [Worker]) -> Result<WorkersExit, DistError> {
        let mut first_failure: Option<WorkerFailure> = None;
        let mut signal: Option<i32> = None;
        let mut kill_at: Option<Instant> = None;
        let mut killed = false;
        loop {
            let pending = PENDING_SIGNAL.swap(0, Ordering::SeqCst);
            if pending != 0 {
                signal.get_or_insert(pending);
                signal_alive(workers, pending);
                kill_at.get_or_insert(Instant::now() + self.grace_period);
            }
            for w in workers.iter_mut().filter(|w| w.status.is_none()) {
                let status = w.child.try_wait().map_err(|e| {
                    launch_err(format!("waiting for worker {}", w.local_rank), Some(e))
                })?;
                let Some(status) = status else { continue };
                w.status = Some(status);
                if !status.success() && first_failure.is_none() && kill_at.is_none() {
                    first_failure = Some(WorkerFailure {
                        local_rank: w.local_rank,
                        rank: w.rank,
                        code: status_code(&status),
                    });
                }
            }
            if first_failure.is_some() && kill_at.is_none() {
                signal_alive(workers, libc::SIGTERM);
                kill_at = Some(Instant::now() + self.grace_period);
            }
            if workers.iter().all(|w| w.status.is_some()) {
                break;
            }
            if let Some(at) = kill_at {
                if !killed && Instant::now() >= at {
                    signal_alive(workers, libc::SIGKILL);
                    killed = true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let code = match (&first_failure, signal) {
            (Some(f), _) => f.code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 0,
        };
        Ok(WorkersExit {
            code,
            first_failure,
            signal,
        })
    }
}

struct Worker {
    child: Child,
    local_rank: usize,
    rank: usize,
    status: Option<ExitStatus>,
}

fn signal_alive(workers: &[Worker], sig: i32) {
    for w in workers.iter().filter(|w| w.status.is_none()) {
        // The pid cannot have been reused: we have not reaped the child yet.
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(w.child.id() as libc::pid_t, sig);
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`, then reap (used when spawning fails half-way).
fn stop_all(workers: &mut [Worker], grace: Duration) {
    signal_alive(workers, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    for w in workers.iter_mut() {
        while w.status.is_none() {
            match w.child.try_wait() {
                Ok(Some(s)) => w.status = Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = w.child.kill();
                    w.status = w.child.wait().ok();
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

/// The last SIGTERM/SIGINT received while a launcher runs (0: none).
static PENDING_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    PENDING_SIGNAL.store(sig, Ordering::SeqCst);
}

/// Installed handlers (with the previous ones) and how many launchers are running.
static HANDLERS: Mutex<(usize, Vec<(libc::c_int, libc::sigaction)>)> = Mutex::new((0, Vec::new()));

/// Routes SIGTERM/SIGINT to [`PENDING_SIGNAL`] while at least one launcher runs; restores the
/// previous handlers when the last one finishes.
struct SignalGuard;

impl SignalGuard {
    fn install() -> Result<Self, DistError> {
        let mut h = HANDLERS.lock().unwrap_or_else(|p| p.into_inner());
        if h.0 == 0 {
            PENDING_SIGNAL.store(0, Ordering::SeqCst);
            for sig in [libc::SIGTERM, libc::SIGINT] {
                // SAFETY: sigaction with a zeroed struct, an empty mask and an async-signal-safe handler.
                unsafe {
                    let mut new: libc::sigaction = std::mem::zeroed();
                    new.sa_sigaction = on_signal as *const () as usize;
                    libc::sigemptyset(&mut new.sa_mask);
                    new.sa_flags = libc::SA_RESTART;
                    let mut old: libc::sigaction = std::mem::zeroed();
                    if libc::sigaction(sig, &new, &mut old) != 0 {
                        return Err(launch_err(
                            format!("installing the handler for signal {sig}"),
                            Some(std::io::Error::last_os_error()),
                        ));
                    }
                    h.1.push((sig, old));
                }
            }
        }
        h.0 += 1;
        Ok(SignalGuard)
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        let mut h = HANDLERS.lock().unwrap_or_else(|p| p.into_inner());
        h.0 = h.0.saturating_sub(1);
        if h.0 == 0 {
            for (sig, old) in h.1.drain(..) {
                // SAFETY: restores the handler saved by install().
                unsafe {
                    libc::sigaction(sig, &old, std::ptr::null_mut());
                }
            }
        }
    }
}
