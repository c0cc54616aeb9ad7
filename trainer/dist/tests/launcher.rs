//! The torchrun-like launcher with /bin/sh workers: environment, failure propagation, SIGTERM then
//! SIGKILL escalation, and signal forwarding.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lf_dist::launcher::{run_workers, Launcher};

fn sh(script: &str) -> Vec<OsString> {
    vec!["-c".into(), script.into()]
}

#[test]
fn workers_get_their_ranks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = format!(
        "echo \"$RANK $LOCAL_RANK $WORLD_SIZE $NODE_RANK $NNODES $NPROC_PER_NODE\" > {}/$LOCAL_RANK",
        dir.path().display()
    );
    let exit = run_workers(2, 1, 2, Path::new("/bin/sh"), &sh(&script)).expect("launch");
    assert!(exit.success(), "{exit:?}");
    let read =
        |i: usize| std::fs::read_to_string(dir.path().join(i.to_string())).expect("worker output");
    assert_eq!(read(0).trim(), "2 0 4 1 2 2");
    assert_eq!(read(1).trim(), "3 1 4 1 2 2");
}

#[test]
fn a_failing_worker_stops_the_others_and_its_code_is_returned() {
    let start = Instant::now();
    let script = "if [ \"$LOCAL_RANK\" = 1 ]; then sleep 0.2; exit 7; fi; exec sleep 30";
    let exit = Launcher::new(3, 0, 1)
        .grace_period(Duration::from_secs(5))
        .run(Path::new("/bin/sh"), &sh(script))
        .expect("launch");
    assert_eq!(exit.code, 7, "{exit:?}");
    let failure = exit.first_failure.expect("a failure");
    assert_eq!((failure.local_rank, failure.rank, failure.code), (1, 1, 7));
    // The sleeping siblings went down on SIGTERM, long before their 30 s.
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn workers_ignoring_sigterm_are_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grace = Duration::from_millis(700);
    // Worker 0 fails only once worker 1 ignores SIGTERM (no race with the trap).
    let script = format!(
        "d={}; if [ \"$LOCAL_RANK\" = 0 ]; then while [ ! -f $d/ready ]; do sleep 0.05; done; exit 3; fi; \
         trap '' TERM; touch $d/ready; exec sleep 30",
        dir.path().display()
    );
    let start = Instant::now();
    let exit = Launcher::new(2, 0, 1)
        .grace_period(grace)
        .run(Path::new("/bin/sh"), &sh(&script))
        .expect("launch");
    assert_eq!(exit.code, 3, "{exit:?}");
    let took = start.elapsed();
    assert!(
        took >= grace && took < grace + Duration::from_secs(10),
        "took {took:?}"
    );
}

#[test]
fn a_missing_program_is_an_error() {
    let e = run_workers(2, 0, 1, Path::new("/nonexistent/lf-trainer"), &[])
        .expect_err("no such program");
    assert!(e.to_string().contains("/nonexistent/lf-trainer"), "{e}");
    assert!(run_workers(0, 0, 1, Path::new("/bin/true"), &[]).is_err());
    assert!(run_workers(1, 2, 2, Path::new("/bin/true"), &[]).is_err());
}

#[test]
fn sigterm_to_the_launcher_reaches_every_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let script = format!(
        "sleep 30 & p=$!; trap \"kill $p; echo term > {d}/$LOCAL_RANK; exit 143\" TERM; \
         touch {d}/ready$LOCAL_RANK; wait"
    );
    let mut launcher = Command::new(env!("CARGO_BIN_EXE_lf-dist-check"))
        .args(["launch", "2", "--", "/bin/sh", "-c", &script])
        .env("LF_DIST_GRACE_MS", "5000")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn launcher");
    // Signal only once both workers have installed their trap (so the launcher has its handler).
    let ready = Instant::now();
    while !(0..2).all(|i| dir.path().join(format!("ready{i}")).exists()) {
        assert!(
            ready.elapsed() < Duration::from_secs(60),
            "workers never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(launcher.id() as libc::pid_t, libc::SIGTERM);
    }
    let start = Instant::now();
    let status = launcher.wait().expect("wait");
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );
    for i in 0..2 {
        let marker =
            std::fs::read_to_string(dir.path().join(i.to_string())).expect("worker saw SIGTERM");
        assert_eq!(marker.trim(), "term");
    }
}

/// The environment the operator renders for an Indexed Job of 2 pods × 2 processes, as two local
/// launchers: the four workers form one group and their collectives are exact.
#[test]
fn two_launchers_as_two_pods_form_one_world_of_four() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let bin = env!("CARGO_BIN_EXE_lf-dist-check");
    let pods: Vec<_> = (0..2)
        .map(|node| {
            Command::new(bin)
                .args([
                    "launch",
                    "2",
                    &node.to_string(),
                    "2",
                    "--",
                    bin,
                    "collectives",
                ])
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("LF_DIST_TIMEOUT_MS", "30000")
                .env_remove("GLOO_SOCKET_IFNAME")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn launcher")
        })
        .collect();
    let mut stdout = String::new();
    for pod in pods {
        let out = pod.wait_with_output().expect("launcher output");
        assert!(
            out.status.success(),
            "{:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    for rank in 0..4 {
        assert!(
            stdout.contains(&format!("rank {rank} of 4 (Gloo): ok")),
            "{stdout}"
        );
    }
}
