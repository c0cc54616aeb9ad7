//! Test support (feature `test-support`): a real `mlflow server` from the Python reference stack,
//! and the trackers' own readers (`tests/reference/trackers_check.py`).

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The reference stack's interpreter: `$LF_PYTHON` or `<repo>/.venv/bin/python`.
pub fn python() -> PathBuf {
    let py = std::env::var_os("LF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        py.exists(),
        "the Python reference stack is missing: {} (run scripts/install-python-ref.sh)",
        py.display()
    );
    py
}

/// `trackers_check.py ARGS` (see the script): what a tracker holds, read by its own reader.
pub fn read_back(args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(repo().join("tests/reference/trackers_check.py"))
        .args(args)
        .output()
        .expect("run trackers_check.py");
    assert!(
        out.status.success(),
        "trackers_check.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("trackers_check.py prints JSON")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A `mlflow server` on `port` keeping its store in a directory; its whole process group is
/// stopped on drop.
pub struct MlflowServer {
    child: Child,
    port: u16,
}

impl MlflowServer {
    /// Starts the server (a SQLite store and served artifacts under `dir`) and waits until
    /// `/health` answers.
    pub fn start(dir: &Path, port: u16) -> MlflowServer {
        let child = Command::new(python().with_file_name("mlflow"))
            .args(["server", "--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("artifacts"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // No job execution (GenAI evaluation jobs, not used here): with it the server keeps
            // huey job stores in a /dev/shm directory it never removes, one per start.
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            // Its own process group: the server forks uvicorn workers (and would fork job
            // consumers), and dropping the server must stop all of them.
            .process_group(0)
            .spawn()
            .expect("start mlflow server");
        let server = MlflowServer { child, port };
        let health = format!("{}/health", server.uri());
        let started = Instant::now();
        while ureq::get(&health)
            .call()
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "mlflow server did not become healthy in 180 s"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        server
    }

    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        let group = -(self.child.id() as i32);
        // SAFETY: signals the process group this server leads (its pid is the group id).
        unsafe { libc::kill(group, libc::SIGTERM) };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            // The group is gone when signal 0 reaches nobody.
            if unsafe { libc::kill(group, 0) } != 0 {
                break;
            }
            let _ = self.child.try_wait();
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above; whatever ignored SIGTERM.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
