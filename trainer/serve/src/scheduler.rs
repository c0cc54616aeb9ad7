//! The model thread: a bounded queue of jobs and the continuous-batching loop. At every decoding
//! step, waiting jobs join the running set (up to `max_running`), then each running sequence is
//! advanced by exactly one forward pass (a prompt chunk or one token); a sequence leaves the set
//! as soon as it finishes, fails, or its client is gone (its event channel closed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::params::Sampling;

/// One model (base or base + adapter) decoding sequences one step at a time. It lives on the
/// model thread only, so its tensors need not be `Sync`.
pub trait Engine {
    type Sequence;
    /// Starts a sequence of `prompt` on model `model` (index into the served models).
    fn start(
        &mut self,
        model: usize,
        prompt: &[u32],
        sampling: &Sampling,
    ) -> Result<Self::Sequence, String>;
    /// One forward pass of `seq`: the token it picked, or `None` while its prompt is being fed.
    fn step(&mut self, seq: &mut Self::Sequence) -> Result<Option<u32>, String>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token (or, on the HTTP side, a stop string).
    Stop,
    /// `max_new_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What the model thread tells a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token(u32),
    Finished(FinishReason),
    Failed(String),
}

/// A request for the model thread.
pub struct Job {
    pub model: usize,
    pub prompt: Vec<u32>,
    pub sampling: Sampling,
    pub events: UnboundedSender<Event>,
    pub queued_at: Instant,
    /// Set by the request side when a stop string ended the answer (it then closes `events`):
    /// the sequence finished with `stop`, its client did not leave.
    pub answered: Arc<AtomicBool>,
}

impl Job {
    /// Why the sequence ends when its request side closed `events`.
    fn closed_reason(&self) -> &'static str {
        if self.answered.load(Ordering::Acquire) {
            "stop"
        } else {
            "cancelled"
        }
    }
}

/// The sending side of the bounded queue (cloned into every handler).
#[derive(Clone)]
pub struct Queue {
    tx: SyncSender<Job>,
    capacity: usize,
    metrics: Metrics,
}

impl Queue {
    /// A queue of `capacity` waiting jobs and its receiving end for [`run`].
    pub fn bounded(capacity: usize, metrics: Metrics) -> (Queue, Receiver<Job>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        (
            Queue {
                tx,
                capacity,
                metrics,
            },
            rx,
        )
    }

    /// Enqueues `job`, or refuses it at once when the queue is full (429) or the model thread is
    /// gone (503).
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        self.metrics.queue_depth.inc();
        self.tx.try_send(job).map_err(|e| {
            self.metrics.queue_depth.dec();
            match e {
                TrySendError::Full(_) => ApiError::queue_full(self.capacity),
                TrySendError::Disconnected(_) => {
                    ApiError::unavailable("the model is not running (it failed to load or stopped)")
                }
            }
        })
    }
}

struct Running<S> {
    seq: S,
    job: Job,
    produced: usize,
    last_token: Option<Instant>,
}

enum Outcome {
    Continue,
    Done(&'static str),
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most sequences decoded together; more wait in the queue.
    pub max_running: usize,
    /// Token ids that end an answer (not sent to the client).
    pub stop_ids: Vec<u32>,
    /// Most KV-cache positions the running sequences may come to hold together (each counts its
    /// prompt and `max_new_tokens`); a job that would exceed it waits at the queue's head.
    pub max_kv_tokens: usize,
}

/// The KV-cache positions a job may come to hold: its prompt and every token it may generate.
fn reserved(job: &Job) -> usize {
    job.prompt.len() + job.sampling.max_new_tokens
}

/// Runs until every [`Queue`] is dropped and nothing is left running.
pub fn run<E: Engine>(engine: &mut E, jobs: &Receiver<Job>, opts: &Options, metrics: &Metrics) {
    let mut running: Vec<Running<E::Sequence>> = Vec::new();
    // The queue's head when it did not fit yet (still counted in the queue depth).
    let mut head: Option<Job> = None;
    let mut open = true;
    loop {
        if running.is_empty() && head.is_none() {
            match jobs.recv() {
                Ok(job) => head = Some(job),
                Err(_) => return,
            }
        }
        loop {
            if head.is_none() && open {
                match jobs.try_recv() {
                    Ok(job) => head = Some(job),
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            let Some(job) = head.take() else { break };
            // A client that left while waiting frees its place at once, whatever its size: a
            // large abandoned request must not hold the queue behind the KV budget.
            if job.events.is_closed() {
                metrics.queue_depth.dec();
                metrics.finished.with_label_values(&["cancelled"]).inc();
                continue;
            }
            let in_use: usize = running.iter().map(|r| reserved(&r.job)).sum();
            // A job larger than the whole budget runs alone rather than never.
            let fits = running.is_empty()
                || (running.len() < opts.max_running.max(1)
                    && in_use + reserved(&job) <= opts.max_kv_tokens);
            if !fits {
                head = Some(job);
                break;
            }
            admit(engine, job, &mut running, metrics);
        }
        running.retain_mut(|r| match advance(engine, r, opts, metrics) {
            Outcome::Continue => true,
            Outcome::Done(reason) => {
                metrics.finished.with_label_values(&[reason]).inc();
                false
            }
        });
        metrics.running.set(running.len() as i64);
        if !open && running.is_empty() && head.is_none() {
            return;
        }
    }
}

/// Runs `f`, turning a panic (libtorch errors panic in tch) into an error for that one sequence:
/// the weights are only read while decoding and each sequence owns its cache, so the others go on.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(format!("the model panicked: {what}"))
    })
}

fn admit<E: Engine>(
    engine: &mut E,
    job: Job,
    running: &mut Vec<Running<E::Sequence>>,
    metrics: &Metrics,
) {
    metrics.queue_depth.dec();
    match guarded(|| engine.start(job.model, &job.prompt, &job.sampling)) {
        Ok(seq) => {
            metrics.prompt_tokens.inc_by(job.prompt.len() as u64);
            running.push(Running {
                seq,
                job,
                produced: 0,
                last_token: None,
            });
            metrics.running.set(running.len() as i64);
        }
        Err(e) => {
            metrics.finished.with_label_values(&["error"]).inc();
            let _ = job.events.send(Event::Failed(e));
        }
    }
}

fn advance<E: Engine>(
    engine: &mut E,
    r: &mut Running<E::Sequence>,
    opts: &Options,
    metrics: &Metrics,
) -> Outcome {
    if r.job.events.is_closed() {
        return Outcome::Done(r.job.closed_reason());
    }
    let token = match guarded(|| engine.step(&mut r.seq)) {
        Ok(Some(t)) => t,
        Ok(None) => return Outcome::Continue,
        Err(e) => {
            tracing::warn!(error = %e, "generation failed");
            let _ = r.job.events.send(Event::Failed(e));
            return Outcome::Done("error");
        }
    };
    let now = Instant::now();
    match r.last_token {
        None => metrics
            .time_to_first_token
            .observe(now.duration_since(r.job.queued_at).as_secs_f64()),
        Some(t) => metrics
            .inter_token_latency
            .observe(now.duration_since(t).as_secs_f64()),
    }
    r.last_token = Some(now);
    if opts.stop_ids.contains(&token) {
        let _ = r.job.events.send(Event::Finished(FinishReason::Stop));
        return Outcome::Done("stop");
    }
    metrics.generated_tokens.inc();
    r.produced += 1;
    if r.job.events.send(Event::Token(token)).is_err() {
        return Outcome::Done(r.job.closed_reason());
    }
    if r.produced >= r.job.sampling.max_new_tokens {
        let _ = r.job.events.send(Event::Finished(FinishReason::Length));
        return Outcome::Done("length");
    }
    Outcome::Continue
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::unbounded_channel;

    /// Sequence `model` counts up from its last prompt token, one prefill step per prompt token
    /// beyond the first; every step is logged so interleaving is visible.
    struct Counting {
        log: Vec<(usize, u32)>,
    }

    struct Seq {
        id: usize,
        next: u32,
        prefill: usize,
    }

    impl Engine for Counting {
        type Sequence = Seq;
        fn start(&mut self, model: usize, prompt: &[u32], _: &Sampling) -> Result<Seq, String> {
            if model > 1 {
                return Err(format!("no model {model}"));
            }
            Ok(Seq {
                id: prompt[0] as usize,
                next: prompt[prompt.len() - 1] + 1,
                prefill: prompt.len() - 1,
            })
        }
        fn step(&mut self, s: &mut Seq) -> Result<Option<u32>, String> {
            assert!(s.id != 7, "sequence 7 breaks the model");
            self.log.push((s.id, s.next));
            if s.prefill > 0 {
                s.prefill -= 1;
                return Ok(None);
            }
            s.next += 1;
            Ok(Some(s.next - 1))
        }
    }

    fn sampling(max: usize) -> Sampling {
        Sampling {
            max_new_tokens: max,
            do_sample: false,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }

    fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
        let mut v = Vec::new();
        while let Ok(e) = rx.try_recv() {
            v.push(e);
        }
        v
    }

    #[test]
    fn sequences_interleave_stop_and_leave() {
        let metrics = Metrics::new();
        let (queue, rx) = Queue::bounded(8, metrics.clone());
        let mut receivers = Vec::new();
        // id 1: 3 tokens then length; id 2: prompt of 3 (2 prefill steps), stops at token 9 (a
        // stop id); id 3: its client is gone before it starts; model 5 does not exist.
        for (id, prompt, max, model) in [
            (1u32, vec![1, 10], 3, 0),
            (2, vec![2, 5, 6], 10, 1),
            (3, vec![3, 1], 5, 0),
            (4, vec![4, 1], 5, 5),
        ] {
            let (tx, erx) = unbounded_channel();
            queue
                .submit(Job {
                    model,
                    prompt: prompt.clone(),
                    sampling: sampling(max),
                    events: tx,
                    queued_at: Instant::now(),
                    answered: Default::default(),
                })
                .unwrap();
            receivers.push((id, erx));
        }
        receivers.remove(2); // id 3's client leaves
        drop(queue);
        let mut engine = Counting { log: Vec::new() };
        let opts = Options {
            max_running: 4,
            stop_ids: vec![9],
            max_kv_tokens: usize::MAX,
        };
        run(&mut engine, &rx, &opts, &metrics);
        let got: Vec<(u32, Vec<Event>)> = receivers
            .iter_mut()
            .map(|(id, r)| (*id, drain(r)))
            .collect();
        use Event::*;
        assert_eq!(
            got,
            vec![
                (
                    1,
                    vec![
                        Token(11),
                        Token(12),
                        Token(13),
                        Finished(FinishReason::Length)
                    ]
                ),
                (2, vec![Token(7), Token(8), Finished(FinishReason::Stop)]),
                (4, vec![Failed("no model 5".into())]),
            ]
        );
        // One step per running sequence per round: 1 and 2 alternate until 1 leaves.
        assert_eq!(
            engine.log,
            vec![
                (1, 11),
                (2, 7),
                (1, 11),
                (2, 7),
                (1, 12),
                (2, 7),
                (1, 13),
                (2, 8),
                (2, 9)
            ]
        );
        assert_eq!(metrics.running.get(), 0);
        assert_eq!(metrics.queue_depth.get(), 0);
        assert_eq!(metrics.generated_tokens.get(), 5);
        let finished = |r: &str| metrics.finished.with_label_values(&[r]).get();
        assert_eq!(
            [
                finished("length"),
                finished("stop"),
                finished("cancelled"),
                finished("error")
            ],
            [1, 1, 1, 1]
        );
    }

    #[test]
    fn a_stop_string_is_a_stop_and_a_client_that_left_is_cancelled() {
        let metrics = Metrics::new();
        let opts = Options {
            max_running: 1,
            stop_ids: vec![],
            max_kv_tokens: usize::MAX,
        };
        for (answered, want) in [(true, "stop"), (false, "cancelled")] {
            let (tx, rx) = unbounded_channel();
            let mut r = Running {
                seq: Seq {
                    id: 1,
                    next: 5,
                    prefill: 0,
                },
                job: Job {
                    model: 0,
                    prompt: vec![1, 4],
                    sampling: sampling(8),
                    events: tx,
                    queued_at: Instant::now(),
                    answered: Arc::new(AtomicBool::new(answered)),
                },
                produced: 1,
                last_token: None,
            };
            // The request side ended the answer (a stop string) or its client left: either
            // way the channel is closed before the next step.
            drop(rx);
            let mut engine = Counting { log: Vec::new() };
            match advance(&mut engine, &mut r, &opts, &metrics) {
                Outcome::Done(reason) => assert_eq!(reason, want),
                Outcome::Continue => panic!("a closed sequence must end"),
            }
        }
    }

    #[test]
    fn a_full_queue_refuses_and_max_running_holds_the_rest() {
        let metrics = Metrics::new();
        let (queue, rx) = Queue::bounded(2, metrics.clone());
        let job = |id: u32| {
            let (tx, erx) = unbounded_channel();
            (
                Job {
                    model: 0,
                    prompt: vec![id, 0],
                    sampling: sampling(2),
                    events: tx,
                    queued_at: Instant::now(),
                    answered: Default::default(),
                },
                erx,
            )
        };
        let (a, _ra) = job(1);
        let (b, _rb) = job(2);
        let (c, _rc) = job(3);
        queue.submit(a).unwrap();
        queue.submit(b).unwrap();
        let refused = queue.submit(c).err().unwrap();
        assert_eq!(refused.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(metrics.queue_depth.get(), 2);
        drop(queue);
        let mut engine = Counting { log: Vec::new() };
        let opts = Options {
            max_running: 1,
            stop_ids: vec![],
            max_kv_tokens: usize::MAX,
        };
        run(&mut engine, &rx, &opts, &metrics);
        // With one place, the second sequence starts only after the first leaves.
        assert_eq!(
            engine.log,
            vec![(1, 1), (1, 1), (1, 2), (2, 1), (2, 1), (2, 2)]
        );
    }

    #[test]
    fn the_kv_budget_holds_back_what_would_exceed_it() {
        let metrics = Metrics::new();
        let (queue, rx) = Queue::bounded(8, metrics.clone());
        let mut receivers = Vec::new();
        // Reservations: 2 + 2 = 4 each; budget 9 takes two at once, not three. Job 4 (2 + 20)
        // exceeds the budget alone and runs once the others are done.
        for (id, max) in [(1u32, 2), (2, 2), (3, 2), (4, 20)] {
            let (tx, erx) = unbounded_channel();
            queue
                .submit(Job {
                    model: 0,
                    prompt: vec![id, 0],
                    sampling: sampling(max),
                    events: tx,
                    queued_at: Instant::now(),
                    answered: Default::default(),
                })
                .unwrap();
            receivers.push(erx);
        }
        drop(queue);
        let mut engine = Counting { log: Vec::new() };
        let opts = Options {
            max_running: 8,
            stop_ids: vec![],
            max_kv_tokens: 9,
        };
        run(&mut engine, &rx, &opts, &metrics);
        let order: Vec<usize> = engine.log.iter().map(|&(id, _)| id).collect();
        let steps = |id: usize| order.iter().filter(|&&i| i == id).count();
        assert_eq!((steps(1), steps(2), steps(3), steps(4)), (3, 3, 3, 21));
        let first = |id: usize| order.iter().position(|&i| i == id).unwrap();
        let last = |id: usize| order.iter().rposition(|&i| i == id).unwrap();
        assert!(first(2) < last(1), "1 and 2 run together: {order:?}");
        assert!(
            first(3) > last(1) && first(3) > last(2),
            "3 waits for room: {order:?}"
        );
        assert!(first(4) > last(3), "4 runs alone: {order:?}");
        assert_eq!(metrics.finished.with_label_values(&["length"]).get(), 4);
    }

    #[test]
    fn a_panicking_step_fails_its_sequence_only() {
        let metrics = Metrics::new();
        let (queue, rx) = Queue::bounded(4, metrics.clone());
        let mut receivers = Vec::new();
        for id in [7u32, 1] {
            let (tx, erx) = unbounded_channel();
            queue
                .submit(Job {
                    model: 0,
                    prompt: vec![id, 0],
                    sampling: sampling(1),
                    events: tx,
                    queued_at: Instant::now(),
                    answered: Default::default(),
                })
                .unwrap();
            receivers.push(erx);
        }
        drop(queue);
        let mut engine = Counting { log: Vec::new() };
        let opts = Options {
            max_running: 4,
            stop_ids: vec![],
            max_kv_tokens: usize::MAX,
        };
        run(&mut engine, &rx, &opts, &metrics); // the panic's message goes to stderr
        assert_eq!(
            drain(&mut receivers[0]),
            vec![Event::Failed(
                "the model panicked: sequence 7 breaks the model".into()
            )]
        );
        assert_eq!(
            drain(&mut receivers[1]),
            vec![Event::Token(1), Event::Finished(FinishReason::Length)]
        );
    }
}
