//! `lf-operator local --serve`: the quick start (shortened) trains, then its result is served by
//! `lf-trainer serve` on 127.0.0.1 — /health reports the model loaded, /v1/models lists the base
//! and the fine-tuned adapter (by its output volume's name), a chat completion through the
//! adapter answers — and Ctrl-C (SIGINT to lf-operator) stops the server and exits 0. Run again
//! on the finished job, `--serve` serves the result without training.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn trainer_bin() -> PathBuf {
    let t = PathBuf::from(env!("CARGO_BIN_EXE_lf-operator")).with_file_name("lf-trainer");
    assert!(
        t.exists(),
        "{} is missing: build the workspace",
        t.display()
    );
    t
}

/// The quick start, 4 steps, no evaluation.
fn job(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("examples/quickstart.yaml")).unwrap();
    let mut job: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let t = &mut job["spec"]["training"];
    for (k, v) in [
        ("max_steps", serde_yaml::Value::from(4)),
        ("eval_strategy", "no".into()),
        ("plot_loss", false.into()),
        ("save_steps", 0.into()),
    ] {
        t[k] = v;
    }
    if let Some(m) = t.as_mapping_mut() {
        m.remove("eval_dataset");
        m.remove("eval_steps");
    }
    let path = dir.join("job.yaml");
    std::fs::write(&path, serde_yaml::to_string(&job).unwrap()).unwrap();
    path
}

/// One HTTP/1.1 request with `Connection: close`: the status code and the body.
fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn start(job: &Path, work: &Path, port: u16, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lf-operator"))
        .args(["local", "-f"])
        .arg(job)
        .arg("--workdir")
        .arg(work)
        .arg("--volume")
        .arg(format!(
            "quickstart={}",
            repo_root().join("examples/quickstart").display()
        ))
        .arg("--trainer")
        .arg(trainer_bin())
        .arg("--serve")
        .arg(port.to_string())
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::from(
            std::fs::File::create(log.with_extension("out")).unwrap(),
        ))
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap()
}

/// Waits for /health to say the model is loaded; fails with the log if the process exits first.
fn wait_ready(child: &mut Child, port: u16, log: &Path) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "lf-operator local --serve exited {status} before serving:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Some((200, body)) = http(port, "GET", "/health", None) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if v["model_loaded"] == true {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "not serving after 300 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// SIGINT, as Ctrl-C: lf-operator stops the server and exits 0; the port closes.
fn interrupt(mut child: Child, port: u16, log: &Path) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "lf-operator local --serve after Ctrl-C: {status}\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    assert!(
        http(port, "GET", "/health", None).is_none(),
        "the server outlived lf-operator"
    );
}

#[test]
fn local_serve_trains_then_serves_the_adapter_until_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    let work = dir.path().join("work");
    let log = dir.path().join("local.log");
    let port = free_port();
    let mut child = start(&job, &work, port, &log);
    wait_ready(&mut child, port, &log);

    let (code, body) = http(port, "GET", "/v1/models", None).expect("/v1/models");
    assert_eq!(code, 200, "{body}");
    let models: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&"quickstart-output"), "{ids:?}");
    let request = r#"{"model": "quickstart-output", "messages": [{"role": "user", "content": "what is the opposite of hot?"}], "max_tokens": 4, "temperature": 0}"#;
    let (code, body) = http(port, "POST", "/v1/chat/completions", Some(request)).expect("chat");
    assert_eq!(code, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        reply["choices"][0]["message"]["content"].is_string(),
        "{reply}"
    );
    assert!(
        reply["usage"]["completion_tokens"].as_u64().unwrap() >= 1,
        "{reply}"
    );
    println!(
        "served {ids:?}; the adapter answers {}",
        reply["choices"][0]["message"]["content"]
    );
    interrupt(child, port, &log);

    // The job already succeeded: --serve serves it again at once, without training.
    let port = free_port();
    let mut again = start(&job, &work, port, &log);
    wait_ready(&mut again, port, &log);
    interrupt(again, port, &log);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("CHOSEN"),
        "the second run planned (trained) again:\n{text}"
    );
}
