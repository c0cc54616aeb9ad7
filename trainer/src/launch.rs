//! The pod's entry point of a multi-process job. The operator renders `WORLD_SIZE`, `NNODES`,
//! `NPROC_PER_NODE` and `NODE_RANK` (not `RANK`): `lf-trainer train` started without `RANK` in such
//! a pod becomes a torchrun-like launcher (lf-dist's [`Launcher`]) that starts one worker — this
//! same binary with the same arguments — per local rank, with `RANK`, `LOCAL_RANK` and the rest
//! set, supervises them, and exits with their result.

use std::ffi::OsString;
use std::time::Duration;

use lf_api::runtime::{env, DEFAULT_LAUNCHER_GRACE_SECONDS};
use lf_dist::launcher::Launcher;

use crate::error::TrainerError;

fn env_usize(name: &'static str) -> Result<Option<usize>, TrainerError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map(Some).map_err(|_| {
            TrainerError::config(format!(
                "environment variable {name}={v:?} is not a non-negative integer"
            ))
        }),
        _ => Ok(None),
    }
}

/// The launcher this process should be, or `None` to train itself (one process, or a worker the
/// launcher started, which has `RANK`).
pub fn pod_launcher() -> Result<Option<Launcher>, TrainerError> {
    if std::env::var_os(env::RANK).is_some() {
        return Ok(None);
    }
    let world = env_usize(env::WORLD_SIZE)?.unwrap_or(1);
    if world <= 1 {
        return Ok(None);
    }
    let nproc = env_usize(env::NPROC_PER_NODE)?.unwrap_or(1).max(1);
    let nnodes = env_usize(env::NNODES)?.unwrap_or(world / nproc);
    let node_rank = env_usize(env::NODE_RANK)?.unwrap_or(0);
    if nnodes * nproc != world {
        return Err(TrainerError::config(format!(
            "WORLD_SIZE={world} is not NNODES={nnodes} × NPROC_PER_NODE={nproc}"
        )));
    }
    if node_rank >= nnodes {
        return Err(TrainerError::config(format!(
            "NODE_RANK={node_rank} must be below NNODES={nnodes}"
        )));
    }
    let grace = grace_period(std::env::var(env::LAUNCHER_GRACE_SECONDS).ok().as_deref())?;
    Ok(Some(
        Launcher::new(nproc, node_rank, nnodes).grace_period(grace),
    ))
}

/// The time workers get between SIGTERM and SIGKILL, from [`env::LAUNCHER_GRACE_SECONDS`]'s
/// value (unset or empty: the default).
pub fn grace_period(value: Option<&str>) -> Result<Duration, TrainerError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(Duration::from_secs(DEFAULT_LAUNCHER_GRACE_SECONDS)),
        Some(v) => v.parse::<u64>().map(Duration::from_secs).map_err(|_| {
            TrainerError::config(format!(
                "environment variable {}={v:?} is not a whole number of seconds",
                env::LAUNCHER_GRACE_SECONDS
            ))
        }),
    }
}

/// Runs this binary's own command line once per local rank; returns the workers' exit code.
pub fn launch(launcher: &Launcher) -> Result<i32, TrainerError> {
    let exe = std::env::current_exe()
        .map_err(|e| TrainerError::runtime(format!("cannot find the lf-trainer binary: {e}")))?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    tracing::info!(
        nproc_per_node = launcher.nproc_per_node,
        node_rank = launcher.node_rank,
        nnodes = launcher.nnodes,
        "launching the workers of this pod"
    );
    let exit = launcher
        .run(&exe, &args)
        .map_err(crate::data_parallel::dist_error)?;
    if let Some(f) = &exit.first_failure {
        tracing::error!(
            local_rank = f.local_rank,
            rank = f.rank,
            code = f.code,
            "a worker failed; the others were stopped"
        );
    }
    Ok(exit.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_period_comes_from_the_environment() {
        assert_eq!(grace_period(None).unwrap(), Duration::from_secs(10));
        assert_eq!(grace_period(Some(" ")).unwrap(), Duration::from_secs(10));
        assert_eq!(grace_period(Some("170")).unwrap(), Duration::from_secs(170));
        let err = grace_period(Some("2m")).unwrap_err();
        assert!(
            err.exit_code() == 2 && err.to_string().contains("LF_LAUNCHER_GRACE_SECONDS"),
            "{err}"
        );
    }
}
