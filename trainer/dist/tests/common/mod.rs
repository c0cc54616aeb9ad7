//! Runs `lf-dist-check` as several local ranks on 127.0.0.1 and collects what each did.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const CHECK_BIN: &str = env!("CARGO_BIN_EXE_lf-dist-check");

/// A port that was free a moment ago (the OS picks it).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

#[derive(Debug)]
pub struct RankResult {
    pub rank: usize,
    /// None: killed by a signal, or by us after `limit` (a hang).
    pub code: Option<i32>,
    pub hung: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Starts `ranks` (a subset of `0..world`) of a job on a fresh port, each running
/// `lf-dist-check args...` with the given collective timeout, and waits for all of them. A rank
/// still running after `limit` is killed and marked `hung`.
pub fn run_ranks(
    world: usize,
    ranks: &[usize],
    args: &[&str],
    timeout_ms: u64,
    limit: Duration,
) -> Vec<RankResult> {
    let port = free_port();
    let start = Instant::now();
    let mut children = Vec::new();
    for &rank in ranks {
        let mut child = Command::new(CHECK_BIN)
            .args(args)
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LF_DIST_TIMEOUT_MS", timeout_ms.to_string())
            .env_remove("GLOO_SOCKET_IFNAME")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lf-dist-check");
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        children.push((rank, child, out, err, None::<(Option<i32>, Duration)>));
    }
    let mut hung = vec![false; children.len()];
    loop {
        let mut running = 0;
        for (i, (_, child, _, _, done)) in children.iter_mut().enumerate() {
            if done.is_some() {
                continue;
            }
            match child.try_wait().expect("try_wait") {
                Some(status) => *done = Some((status.code(), start.elapsed())),
                None if start.elapsed() > limit => {
                    let _ = child.kill();
                    let status = child.wait().expect("wait");
                    hung[i] = true;
                    *done = Some((status.code(), start.elapsed()));
                }
                None => running += 1,
            }
        }
        if running == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    children
        .into_iter()
        .zip(hung)
        .map(|((rank, _, out, err, done), hung)| {
            let (code, elapsed) = done.expect("finished");
            RankResult {
                rank,
                code,
                hung,
                stdout: out.join().unwrap_or_default(),
                stderr: err.join().unwrap_or_default(),
                elapsed,
            }
        })
        .collect()
}
