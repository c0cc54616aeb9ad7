//! The operator at scale (issue 7): N FineTuneJobs (default 1,000) created at once against the
//! fake API server (`lf-fake-apiserver`), reconciled by the real controller (kube-runtime
//! `Controller`, watches, server-side apply), started as `operator/tests/support` starts it.
//!
//!   cargo run --release -p lf-operator --example scale_bench -- [--jobs N] [--apiserver MODE]
//!
//! `--apiserver in-process` (the default): the fake API server is a `tower::Service` in this
//! process, as in the scenario tests, so this process's peak RSS holds both. `--apiserver
//! process`: the same fake server runs in a child process (this binary, re-executed) behind
//! HTTP/1.1 on 127.0.0.1, the jobs are created from there, and the controller talks to it through
//! an ordinary `kube::Client`: this process is the operator alone, as in a cluster.
//!
//! The jobs are created concurrently (all N create requests in flight at once, through
//! `kube::Api::create`) while the controller is already running and watching. The clock starts
//! when the last create has been answered and stops when every job is planned (`status.plan`
//! set) and its children applied: ServiceAccount, Role, RoleBinding, ConfigMap, headless Service
//! and, last, the Indexed Job `<name>-1`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::BodyExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, CustomResourceExt};
use lf_api::FineTuneJob;
use lf_fake_apiserver::FakeApiServer;
use lf_operator::controller::{self, ControllerConfig};
use lf_operator::metrics::Metrics;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// A realistic job: Llama-3-8B LoRA on one 24 GiB GPU, as shipped in `examples/`.
const JOB_YAML: &str = include_str!("../../examples/llama3-8b-lora-24gb.yaml");
const NS: &str = "default";
const MIB: f64 = 1024.0 * 1024.0;
const TARGET_S: f64 = 10.0;
const TARGET_RSS_MIB: f64 = 64.0;
/// How often the store is looked at for jobs that are done.
const POLL: Duration = Duration::from_millis(20);

/// The system allocator, counting live heap bytes and their peak.
struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to `System`; only counters are updated besides.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / MIB
}

/// `VmHWM` (peak RSS) and `VmRSS` of a process (`self` or a pid), in MiB.
fn rss(pid: &str) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn unix_ns(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    InProcess,
    Process,
    /// The child side of `Process`.
    Serve,
}

struct Args {
    jobs: usize,
    mode: Mode,
    /// Reconciliations at once (`None`: the controller's default; 0: unbounded).
    concurrency: Option<u16>,
    timeout: Duration,
}

fn parse_args() -> Args {
    let mut args = Args {
        jobs: 1000,
        mode: Mode::InProcess,
        concurrency: None,
        timeout: Duration::from_secs(120),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .unwrap_or_else(|| panic!("{flag} needs a value (try --help)"))
        };
        let number = |flag: &str, v: String| -> u64 {
            v.parse()
                .unwrap_or_else(|_| panic!("{flag} needs a positive integer, not `{v}`"))
        };
        match a.as_str() {
            "--jobs" => args.jobs = number("--jobs", value("--jobs")) as usize,
            "--concurrency" => {
                let v = number("--concurrency", value("--concurrency"));
                args.concurrency = Some(u16::try_from(v).expect("--concurrency fits in 16 bits"));
            }
            "--timeout-s" => {
                args.timeout = Duration::from_secs(number("--timeout-s", value("--timeout-s")))
            }
            "--apiserver" => {
                args.mode = match value("--apiserver").as_str() {
                    "in-process" => Mode::InProcess,
                    "process" => Mode::Process,
                    other => panic!("--apiserver is `in-process` or `process`, not `{other}`"),
                }
            }
            "--serve-apiserver" => args.mode = Mode::Serve,
            "-h" | "--help" => {
                println!(
                    "scale_bench [--jobs N (1000)] [--apiserver in-process|process (in-process)] [--concurrency C (the controller's default; 0: unbounded)] [--timeout-s S (120)]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument `{other}` (try --help)"),
        }
    }
    assert!(args.jobs > 0, "--jobs must be at least 1");
    args
}

/// The N jobs, with unique names (the CRD allows at most 40 characters).
fn jobs(n: usize) -> Vec<FineTuneJob> {
    let template = FineTuneJob::from_yaml_str(JOB_YAML).expect("the example FineTuneJob parses");
    let base = template
        .metadata
        .name
        .clone()
        .expect("the example has a name");
    (0..n)
        .map(|i| {
            let name = format!("{base}-{i:05}");
            assert!(name.len() <= 40, "{name} is longer than 40 characters");
            let mut job = template.clone();
            if let Some(out) = job.spec.output.sub_path.as_mut() {
                *out = format!("{out}/{name}");
            }
            job.metadata.name = Some(name);
            job.metadata.namespace = Some(NS.into());
            job
        })
        .collect()
}

fn names(jobs: &[FineTuneJob]) -> Vec<String> {
    jobs.iter()
        .map(|j| j.metadata.name.clone().unwrap_or_default())
        .collect()
}

/// Whether the job is planned and every child of attempt 1 is in the store. The Job is applied
/// last, so the cheap check on it comes first.
fn planned_and_applied(fake: &FakeApiServer, name: &str) -> bool {
    let trainer = format!("{name}-trainer");
    fake.get_value::<Job>(NS, &format!("{name}-1")).is_some()
        && fake
            .get_value::<FineTuneJob>(NS, name)
            .is_some_and(|v| v.pointer("/status/plan").is_some_and(|p| !p.is_null()))
        && fake.get_value::<Service>(NS, name).is_some()
        && fake
            .get_value::<ConfigMap>(NS, &format!("{name}-config"))
            .is_some()
        && fake.get_value::<ServiceAccount>(NS, &trainer).is_some()
        && fake.get_value::<Role>(NS, &trainer).is_some()
        && fake.get_value::<RoleBinding>(NS, &trainer).is_some()
}

/// Polls until every job is planned and applied; the time each was first seen so.
async fn until_applied(
    fake: &FakeApiServer,
    names: &[String],
    timeout: Duration,
) -> Vec<SystemTime> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<usize> = (0..names.len()).collect();
    let mut done = vec![UNIX_EPOCH; names.len()];
    loop {
        let now = SystemTime::now();
        pending.retain(|&i| {
            let applied = planned_and_applied(fake, &names[i]);
            if applied {
                done[i] = now;
            }
            !applied
        });
        if pending.is_empty() {
            return done;
        }
        if Instant::now() > deadline {
            eprintln!(
                "timed out after {timeout:?}: {} of {} jobs not planned and applied (e.g. {})",
                pending.len(),
                names.len(),
                names[pending[0]]
            );
            std::process::exit(1);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Creates every job at once; when the first create was sent and when the last was answered.
async fn create_all(client: Client, jobs: &[FineTuneJob]) -> (SystemTime, SystemTime) {
    let api: Api<FineTuneJob> = Api::namespaced(client, NS);
    let pp = PostParams::default();
    let first = SystemTime::now();
    let created = futures::future::join_all(jobs.iter().map(|j| api.create(&pp, j))).await;
    let last = SystemTime::now();
    for r in created {
        r.expect("create FineTuneJob");
    }
    (first, last)
}

/// Whether the controller watches FineTuneJobs, the six child kinds and pods.
fn watching(fake: &FakeApiServer) -> bool {
    fake.requests()
        .iter()
        .filter(|r| r.query.contains("watch=true"))
        .count()
        >= 8
}

/// The child of `--apiserver process`: the fake API server on 127.0.0.1 (HTTP/1.1, each request
/// handed to the in-memory server unchanged). Creates the jobs once the controller watches.
/// Speaks lines on stdout: `listening PORT`, `created FIRST LAST` (when the first create was sent
/// and the last answered), then `applied T1,T2,...` (when each job was planned and applied); all
/// times in Unix ns. Exits when stdin closes.
async fn serve(n: usize, timeout: Duration) {
    let fake = FakeApiServer::new().with_crd(&FineTuneJob::definition());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let port = listener.local_addr().expect("local address").port();
    let client = fake.client();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let client = client.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let client = client.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let bytes = body.collect().await?.to_bytes();
                            let req =
                                http::Request::from_parts(parts, kube::client::Body::from(bytes));
                            client.send(req).await.map_err(anyhow::Error::from)
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    println!("listening {port}");
    while !watching(&fake) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let jobs = jobs(n);
    let (first, last) = create_all(fake.client(), &jobs).await;
    println!("created {} {}", unix_ns(first), unix_ns(last));
    let names = names(&jobs);
    drop(jobs);
    let done = until_applied(&fake, &names, timeout).await;
    let stamps: Vec<String> = done.iter().map(|t| unix_ns(*t).to_string()).collect();
    println!("applied {}", stamps.join(","));
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
}

/// The fake API server: here, or in a child process.
enum ApiServer {
    InProcess(FakeApiServer),
    Process(Box<ChildServer>),
}

/// The fake API server's process and what it says.
struct ChildServer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    port: u16,
}

impl ApiServer {
    async fn start(mode: Mode, n: usize, timeout: Duration) -> ApiServer {
        if mode == Mode::InProcess {
            return ApiServer::InProcess(FakeApiServer::new().with_crd(&FineTuneJob::definition()));
        }
        let exe = std::env::current_exe().expect("the benchmark's own path");
        let mut child = tokio::process::Command::new(exe)
            .args(["--serve-apiserver", "--jobs", &n.to_string()])
            .args(["--timeout-s", &timeout.as_secs().to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the fake API server process");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next_line().await.ok().flatten().unwrap_or_default();
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the fake API server process said `{first}`"));
        ApiServer::Process(Box::new(ChildServer { child, lines, port }))
    }

    fn client(&self) -> Client {
        match self {
            ApiServer::InProcess(fake) => fake.client(),
            ApiServer::Process(server) => {
                let port = server.port;
                let url = format!("http://127.0.0.1:{port}")
                    .parse()
                    .expect("a valid URL");
                Client::try_from(kube::Config::new(url)).expect("a kube client")
            }
        }
    }

    async fn next_line(&mut self, want: &str) -> String {
        let ApiServer::Process(server) = self else {
            unreachable!("only the child process speaks lines")
        };
        let line = server
            .lines
            .next_line()
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        match line.strip_prefix(want) {
            Some(rest) => rest.trim().to_string(),
            None => {
                eprintln!("the fake API server process said `{line}`, not `{want}`");
                std::process::exit(1);
            }
        }
    }

    /// Once the controller watches, creates every job at once (see [`create_all`]).
    async fn create_all(&mut self, jobs: &[FineTuneJob]) -> (SystemTime, SystemTime) {
        match self {
            ApiServer::InProcess(fake) => {
                let deadline = Instant::now() + Duration::from_secs(10);
                while !watching(fake) {
                    assert!(
                        Instant::now() < deadline,
                        "the controller did not start its watches"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                create_all(fake.client(), jobs).await
            }
            ApiServer::Process(_) => {
                let line = self.next_line("created").await;
                let mut times = line
                    .split(' ')
                    .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns.parse().unwrap_or(0)));
                let first = times.next().unwrap_or(UNIX_EPOCH);
                (first, times.next().unwrap_or(first))
            }
        }
    }

    async fn until_applied(&mut self, names: &[String], timeout: Duration) -> Vec<SystemTime> {
        match self {
            ApiServer::InProcess(fake) => until_applied(fake, names, timeout).await,
            ApiServer::Process(_) => self
                .next_line("applied")
                .await
                .split(',')
                .map(|ns| {
                    let ns: u64 = ns.parse().unwrap_or(0);
                    UNIX_EPOCH + Duration::from_nanos(ns)
                })
                .collect(),
        }
    }

    /// The child's `VmHWM`, in MiB.
    fn child_hwm(&self) -> Option<f64> {
        match self {
            ApiServer::InProcess(_) => None,
            ApiServer::Process(server) => server.child.id().map(|pid| rss(&pid.to_string()).0),
        }
    }

    fn requests(&self) -> Option<usize> {
        match self {
            ApiServer::InProcess(fake) => Some(fake.requests().len()),
            ApiServer::Process(_) => None,
        }
    }
}

fn reconciliations(m: &Metrics) -> u64 {
    ["ok", "error"]
        .iter()
        .map(|r| m.reconciliations.with_label_values(&[r]).get())
        .sum()
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let n = args.jobs;
    if args.mode == Mode::Serve {
        serve(n, args.timeout).await;
        return;
    }

    let jobs = jobs(n);
    let names = names(&jobs);
    let mut server = ApiServer::start(args.mode, n, args.timeout).await;
    let metrics = Metrics::new().expect("metrics register");
    let operator_client = server.client();
    let (hwm_before, _) = rss("self");
    let heap_before = LIVE.load(Ordering::Relaxed);

    // The controller, as the scenario tests start it (short wait poll, long resync).
    let mut config = ControllerConfig {
        default_image: "registry.example/lf-trainer:bench".into(),
        wait_poll: Duration::from_millis(50),
        resync: Duration::from_secs(60),
        ..ControllerConfig::default()
    };
    if let Some(c) = args.concurrency {
        config.concurrency = c;
    }
    let concurrency = config.concurrency;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(controller::run(
        operator_client,
        config,
        metrics.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    // All N at once: every create request is in flight concurrently.
    let (wall_first, wall_created) = server.create_all(&jobs).await;
    let t_created = Instant::now();
    let reconciles_at_created = reconciliations(&metrics);
    drop(jobs);

    let done = server.until_applied(&names, args.timeout).await;
    let (hwm_done, _) = rss("self");
    let mut latencies: Vec<f64> = done
        .iter()
        .map(|t| {
            t.duration_since(wall_created)
                .map_or(0.0, |d| d.as_secs_f64())
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let time_s = pct(1.0);
    let reconciles_at_done = reconciliations(&metrics);

    // Let the controller settle (its last status writes): no reconciliation for a second.
    let mut settled = reconciliations(&metrics);
    let mut last_change = Instant::now();
    while last_change.elapsed() < Duration::from_secs(1) && t_created.elapsed() < args.timeout {
        tokio::time::sleep(POLL).await;
        let now = reconciliations(&metrics);
        if now != settled {
            settled = now;
            last_change = Instant::now();
        }
    }
    let settled_s = (last_change.duration_since(t_created)
        + wall_created.duration_since(wall_first).unwrap_or_default())
    .as_secs_f64();
    let (hwm_end, rss_end) = rss("self");
    let child_hwm = server.child_hwm();
    let heap_peak = PEAK.load(Ordering::Relaxed);
    let heap_running = LIVE.load(Ordering::Relaxed);
    let errors = metrics.reconciliations.with_label_values(&["error"]).get();
    let api: Api<FineTuneJob> = Api::namespaced(server.client(), NS);
    let failed = api
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|j| {
                    j.status
                        .as_ref()
                        .is_some_and(|s| s.phase == lf_api::status::Phase::Failed)
                })
                .count()
        })
        .unwrap_or(usize::MAX);
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;
    drop(api);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let heap_after_stop = LIVE.load(Ordering::Relaxed);
    let requests = server.requests();

    let workers = std::thread::available_parallelism().map_or(0, |p| p.get());
    let rate = settled as f64 / settled_s;
    let where_ = match args.mode {
        Mode::InProcess => "in-process fake API server (same process, same tokio runtime)",
        _ => "fake API server in a child process, HTTP/1.1 on 127.0.0.1",
    };
    let concurrency = match concurrency {
        0 => "unbounded".to_string(),
        c => c.to_string(),
    };
    println!("scale_bench: {n} FineTuneJobs (Llama-3-8B LoRA on one 24 GiB GPU), {where_}; controller concurrency {concurrency}; {workers} CPU(s)");
    println!(
        "  created concurrently (all {n} create requests in flight at once{}) in {:.2} s; {reconciles_at_created} reconciliations had already run by then",
        if args.mode == Mode::Process { ", from the API server's process" } else { "" },
        wall_created.duration_since(wall_first).unwrap_or_default().as_secs_f64()
    );
    println!(
        "  all {n} planned and applied (status.plan; ServiceAccount, Role, RoleBinding, ConfigMap, Service, Indexed Job): {time_s:.2} s after the last create (per job: p50 {:.2} s, p90 {:.2} s, p99 {:.2} s)",
        pct(0.5),
        pct(0.9),
        pct(0.99),
    );
    println!(
        "  reconciliations: {settled} in all ({:.2} per job; {reconciles_at_done} had finished when the last job was applied), {rate:.0}/s from the first create until the controller settled at {settled_s:.2} s; {errors} failed; {failed} jobs Failed{}",
        settled as f64 / n as f64,
        requests
            .map(|r| format!("; {r} API requests"))
            .unwrap_or_default(),
    );
    match child_hwm {
        Some(child) => {
            println!("  peak RSS (VmHWM) of the operator process (controller, kube client, this benchmark's bookkeeping; no API server, no creating client): {hwm_before:.1} MiB before the controller starts, {hwm_done:.1} MiB when all were applied, {hwm_end:.1} MiB at the end (RSS now {rss_end:.1} MiB)");
            println!("  the fake API server process (not the operator): peak RSS {child:.1} MiB");
            println!(
                "  live heap of the operator process (counting allocator): {:.1} MiB before the controller, peak {:.1} MiB, {:.1} MiB settled, {:.1} MiB after stopping the controller",
                mib(heap_before),
                mib(heap_peak),
                mib(heap_running),
                mib(heap_after_stop),
            );
        }
        None => {
            println!("  peak RSS (VmHWM) of the whole process, which holds the operator AND the fake API server: {hwm_before:.1} MiB before the controller starts, {hwm_done:.1} MiB when all were applied, {hwm_end:.1} MiB at the end (RSS now {rss_end:.1} MiB)");
            println!(
                "  live heap (counting allocator): {:.1} MiB before the controller, peak {:.1} MiB, {:.1} MiB settled; {:.1} MiB still held after stopping the controller: the fake API server's objects, watch history and request log",
                mib(heap_before),
                mib(heap_peak),
                mib(heap_running),
                mib(heap_after_stop),
            );
            println!(
                "  the fake API server only grows here, so the operator's heap at the peak was at least {:.1} MiB (peak − what the server holds at the end); for the operator's own RSS run with --apiserver process",
                mib(heap_peak.saturating_sub(heap_after_stop)),
            );
        }
    }
    println!(
        "  time {time_s:.2} s / target {TARGET_S} s = {:.2}",
        time_s / TARGET_S
    );
    let what = if child_hwm.is_some() {
        "operator process"
    } else {
        "operator + fake API server in one process"
    };
    println!(
        "  RSS ({what}) {hwm_end:.1} MiB / target {TARGET_RSS_MIB} MiB = {:.2}",
        hwm_end / TARGET_RSS_MIB
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
