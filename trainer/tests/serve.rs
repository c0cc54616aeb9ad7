//! `lf-trainer serve` end to end on the tiny random Llama of `tests/reference/trainer_make_tiny.py`
//! with two adapters trained here: the official `openai` client (tests/reference/serve_openai.py)
//! checks the API, its errors, 12 concurrent streams and a client leaving mid-stream; this test
//! then checks that each model's greedy chat answer through the server is `lf-trainer chat`'s, and
//! its greedy text completion transformers' `generate` with the PEFT adapter
//! (tests/reference/serve_hf_greedy.py).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

mod tiny_run;

use tiny_run::{assets, python, stderr, trainer, write_config};

/// The server process, killed when the test ends (passing or not).
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lf-trainer"))
        .arg("serve")
        .args(args)
        .args(["--port", "0"])
        .env_remove("LF_CONFIG")
        .env("LF_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(url) = line.strip_prefix("listening on ") {
                    break url.to_string();
                }
            }
            _ => {
                let status = child.wait().unwrap();
                panic!("lf-trainer serve exited before listening: {status}");
            }
        }
    };
    Server { child, url }
}

fn train_adapter(cfg: &Path, out: &Path, learning_rate: &str) {
    let o = trainer(
        &[
            "train",
            cfg.to_str().unwrap(),
            &format!("output_dir={}", out.display()),
            "max_steps=2",
            &format!("learning_rate={learning_rate}"),
        ],
        &[],
    );
    assert!(o.status.success(), "train failed: {}", stderr(&o));
}

#[test]
fn openai_client_against_the_server_and_greedy_equals_chat() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let (alpha, beta) = (dir.path().join("alpha"), dir.path().join("beta"));
    train_adapter(&cfg, &alpha, "0.05");
    train_adapter(&cfg, &beta, "0.01");
    let adapters = format!(
        "adapter_name_or_path={},{}",
        alpha.display(),
        beta.display()
    );
    let server = serve(&[cfg.to_str().unwrap(), &adapters]);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/serve_openai.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(&server.url)
        .args(["model", "alpha", "beta"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "serve_openai.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("server summary: {summary}");

    for (model, adapter) in [
        ("model", None),
        ("alpha", Some(&alpha)),
        ("beta", Some(&beta)),
    ] {
        let mut args = vec![
            "chat".to_string(),
            "--prompt".into(),
            "tell me about the cat".into(),
            cfg.display().to_string(),
            "max_new_tokens=8".into(),
            "do_sample=false".into(),
        ];
        args.extend(adapter.map(|a| format!("adapter_name_or_path={}", a.display())));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = trainer(&args, &[]);
        assert!(o.status.success(), "chat failed: {}", stderr(&o));
        let printed = String::from_utf8_lossy(&o.stdout);
        let chat = printed.strip_suffix('\n').unwrap_or(&printed);
        assert_eq!(
            summary[model]["text"], chat,
            "{model}: server vs lf-trainer chat"
        );
        println!(
            "{model}: server = chat = {chat:?} ({} tokens)",
            summary[model]["completion_tokens"]
        );
    }
    let hf = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/serve_hf_greedy.py"))
        .arg(assets().join("model"))
        .args(["tell me about the cat", "8"])
        .arg(format!("alpha={}", alpha.display()))
        .arg(format!("beta={}", beta.display()))
        .output()
        .unwrap();
    assert!(
        hf.status.success(),
        "serve_hf_greedy.py failed:\n{}",
        String::from_utf8_lossy(&hf.stderr)
    );
    let hf: serde_json::Value = serde_json::from_slice(&hf.stdout).unwrap();
    for model in ["model", "alpha", "beta"] {
        let served = &summary["completions"][model];
        assert_eq!(
            served["text"], hf[model]["text"],
            "{model}: server vs transformers"
        );
        assert_eq!(
            served["completion_tokens"], hf[model]["completion_tokens"],
            "{model}: server vs transformers"
        );
        println!(
            "{model}: completion = transformers' greedy generate = {} ({} tokens)",
            served["text"], served["completion_tokens"]
        );
    }
    assert_ne!(
        summary["alpha"]["text"], summary["model"]["text"],
        "the adapter changed nothing: the request's model did not pick it (or training did nothing)"
    );
}
