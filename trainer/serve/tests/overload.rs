//! Beyond the queue's capacity the server answers 429 with `Retry-After` at once, and the
//! requests it took still run: the real router and scheduler over TCP, with an engine that
//! decodes only when the test lets it (so which request runs, waits or is refused is certain).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use lf_serve::metrics::Metrics;
use lf_serve::routes::{App, LOADED};
use lf_serve::scheduler::{self, Queue};
use lf_serve::{ChatPrompt, Codec, Engine, Sampling};

/// Token ids are bytes.
struct Bytes;

impl Codec for Bytes {
    fn chat_prompt(&self, p: &ChatPrompt) -> Result<Vec<u32>, String> {
        Ok(p.user.bytes().map(u32::from).collect())
    }
    fn text_prompt(&self, text: &str) -> Result<Vec<u32>, String> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn decode(&self, ids: &[u32]) -> Result<String, String> {
        Ok(ids.iter().map(|&i| char::from(i as u8)).collect())
    }
}

/// Each step waits for a permit from the test, then emits `x`.
struct Gate(Receiver<()>);

impl Engine for Gate {
    type Sequence = ();
    fn start(&mut self, _: usize, _: &[u32], _: &Sampling) -> Result<(), String> {
        Ok(())
    }
    fn step(&mut self, _: &mut ()) -> Result<Option<u32>, String> {
        self.0.recv().map_err(|_| "gate closed".to_string())?;
        Ok(Some(u32::from(b'x')))
    }
}

fn post(addr: &str, body: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

fn read_all(mut s: TcpStream) -> String {
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    // A bound for a hang, not a speed target.
    for _ in 0..2000 {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("never: {what}");
}

#[test]
fn a_full_queue_gets_429_with_retry_after_and_taken_requests_finish() {
    let metrics = Metrics::new();
    let (queue, jobs) = Queue::bounded(1, metrics.clone());
    let (permits, gate): (Sender<()>, _) = channel();
    let model_thread = {
        let metrics = metrics.clone();
        std::thread::spawn(move || {
            let opts = scheduler::Options {
                max_running: 1,
                stop_ids: vec![],
                max_kv_tokens: usize::MAX,
            };
            scheduler::run(&mut Gate(gate), &jobs, &opts, &metrics)
        })
    };
    let app = Arc::new(App {
        models: vec!["base".into()],
        codec: Arc::new(Bytes),
        context_len: 64,
        defaults: Sampling {
            max_new_tokens: 2,
            do_sample: false,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            seed: 0,
        },
        queue,
        metrics: metrics.clone(),
        state: Arc::new(AtomicU8::new(LOADED)),
        created: 0,
        next_id: AtomicU64::new(1),
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    runtime.spawn(async move { axum::serve(listener, lf_serve::server::router(app)).await });

    let body = r#"{"model": "base", "prompt": "hi", "max_tokens": 2}"#;
    let first = post(&addr, body);
    wait_for("the first request runs", || metrics.running.get() == 1);
    let second = post(&addr, body);
    wait_for("the second request waits", || {
        metrics.queue_depth.get() == 1
    });
    let refused = read_all(post(&addr, body));
    let head = refused.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 429"), "{refused}");
    assert!(head.contains("\r\nretry-after: 1\r\n"), "{refused}");
    assert!(refused.contains(r#""code":"queue_full""#), "{refused}");

    for _ in 0..4 {
        permits.send(()).unwrap();
    }
    for answer in [read_all(first), read_all(second)] {
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(r#""text":"xx""#), "{answer}");
    }
    // The model thread counts a sequence once it has sent its last event.
    wait_for("both taken requests end at max_tokens", || {
        metrics.finished.with_label_values(&["length"]).get() == 2
    });
    drop(runtime);
    drop(permits);
    model_thread.join().unwrap();
}
