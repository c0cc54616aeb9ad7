//! One thread per tracker, fed through a bounded queue that the training loop never waits on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::sink::{Param, Sink};

/// Records a tracker's queue holds before new ones are dropped.
const QUEUE: usize = 4096;

enum Message {
    Params(Vec<Param>, f64),
    Scalars {
        step: u64,
        wall_time: f64,
        values: Vec<(String, f64)>,
    },
    Finish {
        ok: bool,
        artifacts: Vec<(String, PathBuf)>,
    },
}

struct Worker {
    name: &'static str,
    queue: SyncSender<Message>,
    thread: JoinHandle<()>,
    dropped: AtomicU64,
}

/// The running trackers (none when `report_to: none`).
#[derive(Default)]
pub struct Trackers {
    workers: Vec<Worker>,
}

impl Trackers {
    /// Starts a worker thread for each sink.
    pub fn start(sinks: Vec<Box<dyn Sink>>) -> Self {
        let workers = sinks
            .into_iter()
            .filter_map(|sink| {
                let name = sink.name();
                let (queue, inbox) = mpsc::sync_channel(QUEUE);
                let thread = std::thread::Builder::new()
                    .name(format!("track-{name}"))
                    .spawn(move || run(sink, inbox));
                match thread {
                    Ok(thread) => Some(Worker {
                        name,
                        queue,
                        thread,
                        dropped: AtomicU64::new(0),
                    }),
                    Err(e) => {
                        tracing::warn!(tracker = name, error = %e, "cannot start the tracker's thread; it is left out");
                        None
                    }
                }
            })
            .collect();
        Trackers { workers }
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.workers.iter().map(|w| w.name).collect()
    }

    /// The run's hyper-parameters.
    pub fn params(&self, params: Vec<Param>) {
        let now = wall_time();
        self.send(|| Message::Params(params.clone(), now));
    }

    /// One record's scalars at `step`.
    pub fn scalars(&self, step: u64, values: Vec<(String, f64)>) {
        let wall_time = wall_time();
        self.send(|| Message::Scalars {
            step,
            wall_time,
            values: values.clone(),
        });
    }

    fn send(&self, message: impl Fn() -> Message) {
        for w in &self.workers {
            match w.queue.try_send(message()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    if w.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(tracker = w.name, "the tracker falls behind; records are dropped for it until it catches up");
                    }
                }
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }

    /// Ends the run in every tracker (`ok`: it succeeded; `artifacts` to keep with it) and waits up
    /// to `budget` in all for them to finish.
    pub fn finish(self, ok: bool, artifacts: Vec<(String, PathBuf)>, budget: Duration) {
        let deadline = Instant::now() + budget;
        for w in &self.workers {
            let finish = Message::Finish {
                ok,
                artifacts: artifacts.clone(),
            };
            // Wait for room (bounded by the budget): the end of the run must not be dropped.
            let mut message = Some(finish);
            while let Some(m) = message.take() {
                match w.queue.try_send(m) {
                    Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                        message = Some(m);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {}
                }
            }
        }
        for w in self.workers {
            drop(w.queue);
            while !w.thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if w.thread.is_finished() {
                let _ = w.thread.join();
            } else {
                tracing::warn!(
                    tracker = w.name,
                    "the tracker did not finish in time; it is left behind"
                );
            }
            let dropped = w.dropped.load(Ordering::Relaxed);
            if dropped > 0 {
                tracing::warn!(
                    tracker = w.name,
                    dropped,
                    "records dropped while the tracker fell behind"
                );
            }
        }
    }
}

/// The worker's loop: handle each message, retry when the sink asks, stop after `Finish`.
fn run(mut sink: Box<dyn Sink>, inbox: Receiver<Message>) {
    let name = sink.name();
    let mut failures = 0u64;
    loop {
        let message = match sink.retry_in() {
            Some(wait) => match inbox.recv_timeout(wait) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    sink.retry();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            },
            None => match inbox.recv() {
                Ok(m) => m,
                Err(_) => return,
            },
        };
        let (result, last) = match message {
            Message::Params(p, t) => (sink.params(&p, t), false),
            Message::Scalars {
                step,
                wall_time,
                values,
            } => (sink.scalars(step, wall_time, &values), false),
            Message::Finish { ok, artifacts } => (sink.finish(ok, &artifacts), true),
        };
        if let Err(e) = result {
            failures += 1;
            if failures == 1 || failures.is_power_of_two() || last {
                tracing::warn!(tracker = name, error = %e, failures, "tracker error; training continues");
            }
        }
        if last {
            return;
        }
    }
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
