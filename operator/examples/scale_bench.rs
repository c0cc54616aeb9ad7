//! The operator at scale (issue 7): N FineTuneJobs (default 1,000) created at once, reconciled by
//! the real controller (kube-runtime `Controller`, watches, server-side apply), started as
//! `operator/tests/support` starts it, against one of three API servers:
//!
//!   cargo run --release -p lf-operator --example scale_bench -- [--jobs N] [--apiserver MODE]
//!
//! `--apiserver in-process` (the default): the fake API server (`lf-fake-apiserver`) is a
//! `tower::Service` in this process, as in the scenario tests, so this process's peak RSS holds
//! both. `--apiserver process`: the same fake server runs in a child process (this binary,
//! re-executed) behind HTTP/1.1 on 127.0.0.1, the jobs are created from there, and the controller
//! talks to it through an ordinary `kube::Client`: this process is the operator alone, as in a
//! cluster. `--apiserver kubeconfig`: a real Kubernetes API server, the one `KUBECONFIG` names (for
//! example `tests/cluster/up.sh DIR && source DIR/env`); a child process (this binary again, with
//! the kubeconfig's own identity) installs the CRD, makes a fresh namespace, creates the jobs,
//! watches for them to be applied and reads the API server's `/metrics`, so that this process is
//! again the operator alone (see [`drive`]). The operator connects with the kubeconfig's cluster
//! and, by default, as a ServiceAccount holding exactly the Helm chart's ClusterRole, as it runs in
//! a cluster (`--operator-identity kubeconfig`: with the kubeconfig's user, which for the test
//! cluster's admin is exempt from the API server's priority and fairness).
//!
//! The jobs are created concurrently (`--create-concurrency C` requests in flight; by default all
//! N at once, through `kube::Api::create`) while the controller is already running and watching.
//! The clock starts when the last create has been answered and stops when every job is planned
//! (`status.plan` set) and its children applied: ServiceAccount, Role, RoleBinding, ConfigMap,
//! headless Service and, last, the Indexed Job `<name>-1`.
//!
//! The operator's API requests are counted in its own process: every request a `kube::Client`
//! built from a `kube::Config` sends opens kube-client's `HTTP` tracing span (inside kube's retry
//! layer, so a retried request counts each time it is sent), and a tracing layer here counts those
//! spans and the status codes recorded on them. With the in-process fake (whose client has no such
//! span) the fake's own request log is counted instead, less the benchmark's creates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::BoxStream;
use futures::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use lf_api::FineTuneJob;
use lf_fake_apiserver::FakeApiServer;
use lf_operator::controller::{self, ControllerConfig};
use lf_operator::metrics::Metrics;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines, Stdin};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// A realistic job: Llama-3-8B LoRA on one 24 GiB GPU, as shipped in `examples/`.
const JOB_YAML: &str = include_str!("../../examples/llama3-8b-lora-24gb.yaml");
/// The operator's permissions as the Helm chart grants them (the first document's `rules`).
const CHART_RBAC: &str = include_str!("../../charts/templates/rbac.yaml");
/// The namespace of the jobs on the fake API server.
const NS: &str = "default";
const MIB: f64 = 1024.0 * 1024.0;
/// Targets: all planned and applied within 10 s on the fake API server, 30 s on a real one.
const TARGET_FAKE_S: f64 = 10.0;
const TARGET_REAL_S: f64 = 30.0;
const TARGET_RSS_MIB: f64 = 64.0;
/// How often the store is looked at for jobs that are done.
const POLL: Duration = Duration::from_millis(20);
/// The watches the controller opens: FineTuneJobs, the six child kinds and pods.
const CONTROLLER_WATCHES: u64 = 8;
/// The operator's ServiceAccount in the benchmark's namespace (`--operator-identity serviceaccount`).
const OPERATOR_SA: &str = "lf-operator";
/// Field manager of what the benchmark itself writes on a real API server (the CRD).
const BENCH_MANAGER: &str = "lf-scale-bench";

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

/// `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---- the operator's API requests, counted from kube-client's `HTTP` spans ---------------------

/// Requests sent by the `kube::Client`s of this process (see the module docs).
struct HttpLog {
    total: AtomicU64,
    watches: AtomicU64,
    /// `VERB resource[/subresource]` → requests.
    kinds: Mutex<BTreeMap<String, u64>>,
    /// HTTP status code → responses.
    codes: Mutex<BTreeMap<u16, u64>>,
}

static HTTP_LOG: HttpLog = HttpLog {
    total: AtomicU64::new(0),
    watches: AtomicU64::new(0),
    kinds: Mutex::new(BTreeMap::new()),
    codes: Mutex::new(BTreeMap::new()),
};

/// What [`HttpLog`] held at one moment.
#[derive(Clone, Default)]
struct HttpCounts {
    total: u64,
    kinds: BTreeMap<String, u64>,
    codes: BTreeMap<u16, u64>,
}

impl HttpLog {
    fn request(&self, method: &str, url: &str) {
        let (path, query) = split_url(url);
        let (verb, resource) = classify(method, path, query);
        self.total.fetch_add(1, Ordering::Relaxed);
        if verb == "WATCH" {
            self.watches.fetch_add(1, Ordering::Relaxed);
        }
        *self
            .kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(format!("{verb} {resource}"))
            .or_insert(0) += 1;
    }

    fn code(&self, code: u16) {
        *self
            .codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_insert(0) += 1;
    }

    fn snapshot(&self) -> HttpCounts {
        HttpCounts {
            total: self.total.load(Ordering::Relaxed),
            kinds: self.kinds.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            codes: self.codes.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

impl HttpCounts {
    /// What was counted after `earlier`.
    fn since(&self, earlier: &HttpCounts) -> HttpCounts {
        let minus = |now: u64, then: Option<&u64>| now.saturating_sub(then.copied().unwrap_or(0));
        HttpCounts {
            total: self.total.saturating_sub(earlier.total),
            kinds: self
                .kinds
                .iter()
                .map(|(k, v)| (k.clone(), minus(*v, earlier.kinds.get(k))))
                .filter(|(_, v)| *v > 0)
                .collect(),
            codes: self
                .codes
                .iter()
                .map(|(k, v)| (*k, minus(*v, earlier.codes.get(k))))
                .filter(|(_, v)| *v > 0)
                .collect(),
        }
    }

    /// `6,000 PATCH (5,000 …), 2,000 GET …`: per verb, the resources of each.
    fn breakdown(&self) -> String {
        // Per verb: its requests, and those of each resource.
        type PerResource<'a> = Vec<(u64, &'a str)>;
        let mut verbs: BTreeMap<&str, (u64, PerResource)> = BTreeMap::new();
        for (kind, n) in &self.kinds {
            let (verb, resource) = kind.split_once(' ').unwrap_or((kind, ""));
            let e = verbs.entry(verb).or_default();
            e.0 += n;
            e.1.push((*n, resource));
        }
        let mut verbs: Vec<_> = verbs.into_iter().collect();
        verbs.sort_by_key(|v| std::cmp::Reverse(v.1 .0));
        verbs
            .into_iter()
            .map(|(verb, (n, mut resources))| {
                resources.sort_by_key(|r| std::cmp::Reverse(r.0));
                let inner: Vec<String> = resources
                    .iter()
                    .map(|(n, r)| format!("{} {r}", thousands(*n)))
                    .collect();
                format!("{} {verb} ({})", thousands(n), inner.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// `409 ×3, 429 ×1`, or `none`.
    fn non_2xx(&self) -> String {
        let bad: Vec<String> = self
            .codes
            .iter()
            .filter(|(c, _)| !(200..300).contains(*c))
            .map(|(c, n)| format!("{c} ×{}", thousands(*n)))
            .collect();
        if bad.is_empty() {
            "none".into()
        } else {
            bad.join(", ")
        }
    }
}

/// `(path, query)` of a URL (with or without scheme and authority).
fn split_url(url: &str) -> (&str, &str) {
    let rest = match url.find("://") {
        Some(i) => &url[i + 3..],
        None => url,
    };
    let path_and_query = if url.contains("://") {
        rest.find('/').map_or("/", |i| &rest[i..])
    } else {
        rest
    };
    path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""))
}

/// The verb (as the API server's `apiserver_request_total` names it: GET, LIST, WATCH, POST,
/// PATCH, PUT, DELETE) and the resource (with its subresource) of a Kubernetes API request.
fn classify(method: &str, path: &str, query: &str) -> (&'static str, String) {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest: &[&str] = match segments.first() {
        Some(&"api") => segments.get(2..).unwrap_or(&[]),
        Some(&"apis") => segments.get(3..).unwrap_or(&[]),
        _ => &[],
    };
    let rest = match rest {
        ["namespaces", _, more @ ..] if !more.is_empty() => more,
        _ => rest,
    };
    let (resource, named) = match rest {
        [] => (path.to_string(), true),
        [r] => (r.to_string(), false),
        [r, _] => (r.to_string(), true),
        [r, _, sub, ..] => (format!("{r}/{sub}"), true),
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match method {
        "GET" if watch => "WATCH",
        "GET" if !named => "LIST",
        "GET" => "GET",
        "POST" => "POST",
        "PATCH" => "PATCH",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        _ => "OTHER",
    };
    (verb, resource)
}

/// Counts kube-client's `HTTP` spans (one per request sent) and their `http.status_code`.
struct HttpSpans;

#[derive(Default)]
struct HttpFields {
    method: Option<String>,
    url: Option<String>,
    status: Option<u16>,
}

impl tracing::field::Visit for HttpFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "http.method" => self.method = Some(format!("{value:?}")),
            "http.url" => self.url = Some(format!("{value:?}")),
            _ => {}
        }
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "http.status_code" {
            self.status = u16::try_from(value).ok();
        }
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if field.name() == "http.status_code" {
            self.status = u16::try_from(value).ok();
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for HttpSpans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = HttpFields::default();
        attrs.record(&mut fields);
        if let (Some(method), Some(url)) = (fields.method, fields.url) {
            HTTP_LOG.request(&method, &url);
        }
    }
    fn on_record(
        &self,
        _id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = HttpFields::default();
        values.record(&mut fields);
        if let Some(code) = fields.status {
            HTTP_LOG.code(code);
        }
    }
}

/// Logs at `RUST_LOG` (default `warn`) and counts the `kube::Client` requests (see [`HttpSpans`]).
fn init_tracing() {
    let fmt_filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let spans = tracing_subscriber::filter::filter_fn(|m| {
        m.is_span() && m.name() == "HTTP" && m.target().starts_with("kube_client")
    })
    .with_max_level_hint(tracing::level_filters::LevelFilter::DEBUG);
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_filter(fmt_filter))
        .with(HttpSpans.with_filter(spans))
        .init();
}

// ---- arguments ------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    InProcess,
    Process,
    Kubeconfig,
    /// The child side of `Process`.
    Serve,
    /// The child side of `Kubeconfig`.
    Drive,
}

/// Who the operator is on a real API server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Identity {
    /// A ServiceAccount bound to the Helm chart's ClusterRole, with a bound token.
    ServiceAccount,
    /// The kubeconfig's own user (`kube::Client::try_default`).
    Kubeconfig,
}

struct Args {
    jobs: usize,
    mode: Mode,
    /// Reconciliations at once (`None`: the controller's default; 0: unbounded).
    concurrency: Option<u16>,
    /// Create requests in flight at once (0: all N).
    create_concurrency: usize,
    /// `None`: 120 s on the fake API server, 600 s on a real one.
    timeout: Option<Duration>,
    identity: Identity,
}

impl Args {
    fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(match self.mode {
            Mode::Kubeconfig | Mode::Drive => Duration::from_secs(600),
            _ => Duration::from_secs(120),
        })
    }
    fn create_concurrency(&self) -> usize {
        match self.create_concurrency {
            0 => self.jobs,
            c => c.min(self.jobs),
        }
    }
}

fn parse_args() -> Args {
    let mut args = Args {
        jobs: 1000,
        mode: Mode::InProcess,
        concurrency: None,
        create_concurrency: 0,
        timeout: None,
        identity: Identity::ServiceAccount,
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
            "--create-concurrency" => {
                args.create_concurrency =
                    number("--create-concurrency", value("--create-concurrency")) as usize
            }
            "--timeout-s" => {
                args.timeout = Some(Duration::from_secs(number(
                    "--timeout-s",
                    value("--timeout-s"),
                )))
            }
            "--apiserver" => {
                args.mode = match value("--apiserver").as_str() {
                    "in-process" => Mode::InProcess,
                    "process" => Mode::Process,
                    "kubeconfig" => Mode::Kubeconfig,
                    other => panic!(
                        "--apiserver is `in-process`, `process` or `kubeconfig`, not `{other}`"
                    ),
                }
            }
            "--operator-identity" => {
                args.identity = match value("--operator-identity").as_str() {
                    "serviceaccount" => Identity::ServiceAccount,
                    "kubeconfig" => Identity::Kubeconfig,
                    other => panic!(
                        "--operator-identity is `serviceaccount` or `kubeconfig`, not `{other}`"
                    ),
                }
            }
            "--serve-apiserver" => args.mode = Mode::Serve,
            "--drive-apiserver" => args.mode = Mode::Drive,
            "-h" | "--help" => {
                println!(
                    "scale_bench [--jobs N (1000)] [--apiserver in-process|process|kubeconfig (in-process)] \
                     [--concurrency C (the controller's default; 0: unbounded)] \
                     [--create-concurrency C (0: all N at once)] \
                     [--operator-identity serviceaccount|kubeconfig (serviceaccount; kubeconfig mode only)] \
                     [--timeout-s S (120; 600 with kubeconfig)]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument `{other}` (try --help)"),
        }
    }
    assert!(args.jobs > 0, "--jobs must be at least 1");
    args
}

// ---- the jobs -------------------------------------------------------------------------------

fn template() -> (FineTuneJob, String) {
    let template = FineTuneJob::from_yaml_str(JOB_YAML).expect("the example FineTuneJob parses");
    let base = template
        .metadata
        .name
        .clone()
        .expect("the example has a name");
    (template, base)
}

/// The N names (the CRD allows at most 40 characters).
fn job_names(n: usize) -> Vec<String> {
    let (_, base) = template();
    (0..n)
        .map(|i| {
            let name = format!("{base}-{i:05}");
            assert!(name.len() <= 40, "{name} is longer than 40 characters");
            name
        })
        .collect()
}

/// The N jobs, in namespace `ns`.
fn jobs(n: usize, ns: &str) -> Vec<FineTuneJob> {
    let (template, _) = template();
    job_names(n)
        .into_iter()
        .map(|name| {
            let mut job = template.clone();
            if let Some(out) = job.spec.output.sub_path.as_mut() {
                *out = format!("{out}/{name}");
            }
            job.metadata.name = Some(name);
            job.metadata.namespace = Some(ns.into());
            job
        })
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

/// Creates every job, `at_once` requests in flight; when the first create was sent and when the
/// last was answered.
async fn create_all(
    client: Client,
    ns: &str,
    jobs: &[FineTuneJob],
    at_once: usize,
) -> (SystemTime, SystemTime) {
    let api: Api<FineTuneJob> = Api::namespaced(client, ns);
    let pp = PostParams::default();
    let first = SystemTime::now();
    let created: Vec<_> = futures::stream::iter(jobs.iter().map(|j| api.create(&pp, j)))
        .buffer_unordered(at_once.max(1))
        .collect()
        .await;
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
        >= CONTROLLER_WATCHES as usize
}

/// The child of `--apiserver process`: the fake API server on 127.0.0.1 (HTTP/1.1, each request
/// handed to the in-memory server unchanged). Creates the jobs once the controller watches.
/// Speaks lines on stdout: `listening PORT`, `created FIRST LAST` (when the first create was sent
/// and the last answered), then `applied T1,T2,...` (when each job was planned and applied); all
/// times in Unix ns. Exits when stdin closes.
async fn serve(n: usize, timeout: Duration, at_once: usize) {
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
    let jobs = jobs(n, NS);
    let (first, last) = create_all(fake.client(), NS, &jobs, at_once).await;
    println!("created {} {}", unix_ns(first), unix_ns(last));
    drop(jobs);
    let names = job_names(n);
    let done = until_applied(&fake, &names, timeout).await;
    let stamps: Vec<String> = done.iter().map(|t| unix_ns(*t).to_string()).collect();
    println!("applied {}", stamps.join(","));
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
}

// ---- a real API server: the driver process ---------------------------------------------------

/// The parts of a job that must exist before it counts as planned and applied: the FineTuneJob
/// with `status.plan`, then its six children.
const PARTS: [&str; 7] = [
    "FineTuneJob status.plan",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "Service",
    "Job",
];
const ALL_PARTS: u8 = (1 << PARTS.len()) - 1;

/// The name of part `part` of job `name`.
fn part_name(part: usize, name: &str) -> String {
    match part {
        1..=3 => format!("{name}-trainer"),
        4 => format!("{name}-config"),
        6 => format!("{name}-1"),
        _ => name.to_string(),
    }
}

enum Seen {
    InitDone(usize),
    Applied(usize, String),
}

/// Which parts of which jobs have been seen, and when each job was complete.
struct Progress {
    index: HashMap<(usize, String), usize>,
    masks: Vec<u8>,
    done: Vec<Option<SystemTime>>,
    remaining: usize,
    inits: u8,
}

fn child_watch<K>(client: &Client, ns: &str, part: usize) -> BoxStream<'static, Seen>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    // Metadata only (`Api<PartialObjectMeta<K>>` asks for it).
    let api: Api<PartialObjectMeta<K>> = Api::namespaced(client.clone(), ns);
    let config = watcher::Config::default().labels(lf_render::LABEL_JOB_NAME);
    watcher::watcher(api, config)
        .filter_map(move |e| async move {
            match e {
                Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) => {
                    Some(Seen::Applied(part, m.name_any()))
                }
                Ok(watcher::Event::InitDone) => Some(Seen::InitDone(part)),
                Ok(_) => None,
                Err(e) => {
                    eprintln!("driver: watch of {}: {e}", PARTS[part]);
                    None
                }
            }
        })
        .boxed()
}

/// Watches the namespace for the jobs' plans and children (the FineTuneJobs whole, the children's
/// metadata only). Resolves the first receiver once every watch has listed, and notifies once all
/// jobs are complete.
fn watch_applied(
    client: &Client,
    ns: &str,
    names: &[String],
) -> (
    tokio::sync::oneshot::Receiver<()>,
    Arc<tokio::sync::Notify>,
    Arc<Mutex<Progress>>,
) {
    let ftjs: Api<FineTuneJob> = Api::namespaced(client.clone(), ns);
    let planned = watcher::watcher(ftjs, watcher::Config::default())
        .filter_map(|e| async move {
            match e {
                Ok(watcher::Event::Apply(j) | watcher::Event::InitApply(j)) => j
                    .status
                    .as_ref()
                    .and_then(|s| s.plan.as_ref())
                    .map(|_| Seen::Applied(0, j.name_any())),
                Ok(watcher::Event::InitDone) => Some(Seen::InitDone(0)),
                Ok(_) => None,
                Err(e) => {
                    eprintln!("driver: watch of FineTuneJobs: {e}");
                    None
                }
            }
        })
        .boxed();
    let streams = vec![
        planned,
        child_watch::<ServiceAccount>(client, ns, 1),
        child_watch::<Role>(client, ns, 2),
        child_watch::<RoleBinding>(client, ns, 3),
        child_watch::<ConfigMap>(client, ns, 4),
        child_watch::<Service>(client, ns, 5),
        child_watch::<Job>(client, ns, 6),
    ];
    let mut index = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        for part in 0..PARTS.len() {
            index.insert((part, part_name(part, name)), i);
        }
    }
    let progress = Arc::new(Mutex::new(Progress {
        index,
        masks: vec![0; names.len()],
        done: vec![None; names.len()],
        remaining: names.len(),
        inits: 0,
    }));
    let all_done = Arc::new(tokio::sync::Notify::new());
    let (init_tx, init_rx) = tokio::sync::oneshot::channel();
    let (p, notify) = (progress.clone(), all_done.clone());
    tokio::spawn(async move {
        let mut merged = futures::stream::select_all(streams);
        let mut init_tx = Some(init_tx);
        while let Some(seen) = merged.next().await {
            let now = SystemTime::now();
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            match seen {
                Seen::InitDone(part) => {
                    p.inits |= 1 << part;
                    if p.inits == ALL_PARTS {
                        if let Some(tx) = init_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                Seen::Applied(part, name) => {
                    let Some(&i) = p.index.get(&(part, name)) else {
                        continue;
                    };
                    if p.masks[i] & (1 << part) != 0 {
                        continue;
                    }
                    p.masks[i] |= 1 << part;
                    if p.masks[i] == ALL_PARTS {
                        p.done[i] = Some(now);
                        p.remaining -= 1;
                        if p.remaining == 0 {
                            notify.notify_one();
                        }
                    }
                }
            }
        }
    });
    (init_rx, all_done, progress)
}

/// Samples of a Prometheus text exposition: `(name, labels)` → value.
type Labels = Vec<(String, String)>;
type Samples = HashMap<(String, Labels), f64>;

/// The API server's metrics the report reads.
const METRICS: [&str; 20] = [
    "apiserver_request_total",
    "apiserver_terminated_watchers_total",
    "apiserver_request_duration_seconds_sum",
    "apiserver_request_duration_seconds_count",
    "apiserver_flowcontrol_dispatched_requests_total",
    "apiserver_flowcontrol_rejected_requests_total",
    "apiserver_flowcontrol_request_wait_duration_seconds_sum",
    "apiserver_flowcontrol_request_wait_duration_seconds_count",
    "apiserver_flowcontrol_nominal_limit_seats",
    "apiserver_flowcontrol_current_limit_seats",
    "etcd_request_duration_seconds_sum",
    "etcd_request_duration_seconds_count",
    "apiserver_admission_step_admission_duration_seconds_sum",
    "apiserver_admission_controller_admission_duration_seconds_sum",
    "apiserver_watch_events_total",
    "apiserver_watch_events_sizes_sum",
    "field_validation_request_duration_seconds_sum",
    "apiserver_storage_objects",
    "apiserver_longrunning_requests",
    "process_cpu_seconds_total",
];

fn parse_labels(s: &str) -> Option<(Labels, &str)> {
    let mut labels = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(r) = rest.strip_prefix('}') {
            return Some((labels, r));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => {
                    let (_, e) = chars.next()?;
                    value.push(if e == 'n' { '\n' } else { e });
                }
                '"' => break i,
                c => value.push(c),
            }
        };
        rest = &rest[end + 1..];
        labels.push((key, value));
    }
}

fn parse_prometheus(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some(end) = line.find(['{', ' ']) else {
            continue;
        };
        let name = &line[..end];
        if !METRICS.contains(&name) {
            continue;
        }
        let (labels, rest) = match line[end..].strip_prefix('{') {
            Some(l) => match parse_labels(l) {
                Some(parsed) => parsed,
                None => continue,
            },
            None => (Vec::new(), &line[end..]),
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            samples.insert((name.to_string(), labels), v);
        }
    }
    samples
}

fn label<'a>(labels: &'a Labels, key: &str) -> &'a str {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// The API server's metrics before and after the measured window.
struct Window {
    before: Samples,
    after: Samples,
}

impl Window {
    /// The growth of each series of `name` (gauges: their value after).
    fn deltas<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a Labels, f64)> + 'a {
        self.after
            .iter()
            .filter(move |((n, _), _)| n == name)
            .map(|(key, v)| (&key.1, v - self.before.get(key).copied().unwrap_or(0.0)))
    }

    fn sum(&self, name: &str, keep: impl Fn(&Labels) -> bool) -> f64 {
        self.deltas(name)
            .filter(|(l, _)| keep(l))
            .map(|(_, v)| v)
            .sum()
    }

    /// Sums of `name` grouped by the values of `keys`, largest first, zeros left out.
    fn group(
        &self,
        name: &str,
        keys: &[&str],
        keep: impl Fn(&Labels) -> bool,
    ) -> Vec<(Vec<String>, f64)> {
        let mut groups: BTreeMap<Vec<String>, f64> = BTreeMap::new();
        for (labels, v) in self.deltas(name).filter(|(l, _)| keep(l)) {
            let key = keys.iter().map(|k| label(labels, k).to_string()).collect();
            *groups.entry(key).or_insert(0.0) += v;
        }
        let mut groups: Vec<_> = groups.into_iter().filter(|(_, v)| *v > 0.0).collect();
        groups.sort_by(|a, b| b.1.total_cmp(&a.1));
        groups
    }

    fn gauge(&self, name: &str, keep: impl Fn(&Labels) -> bool) -> Option<f64> {
        self.after
            .iter()
            .filter(|((n, l), _)| n == name && keep(l))
            .map(|(_, v)| *v)
            .reduce(f64::max)
    }
}

/// `sum ÷ count` per group of a `_sum`/`_count` pair, largest sum first.
fn timed(w: &Window, base: &str, keys: &[&str], keep: impl Fn(&Labels) -> bool + Copy) -> String {
    let counts: HashMap<Vec<String>, f64> = w
        .group(&format!("{base}_count"), keys, keep)
        .into_iter()
        .collect();
    w.group(&format!("{base}_sum"), keys, keep)
        .into_iter()
        .take(8)
        .map(|(k, sum)| {
            let n = counts.get(&k).copied().unwrap_or(0.0);
            format!(
                "{} {} × {:.1} ms = {sum:.1} s",
                k.join(" ").trim(),
                thousands(n as u64),
                if n > 0.0 { 1000.0 * sum / n } else { 0.0 }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A Kubernetes API resource with its subresource (`finetunejobs/status`).
fn resource(labels: &Labels) -> String {
    match label(labels, "subresource") {
        "" => label(labels, "resource").to_string(),
        sub => format!("{}/{sub}", label(labels, "resource")),
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux ABI.
    Some(ticks / 100.0)
}

/// Busy and total CPU seconds of the whole machine, from `/proc/stat`.
fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some(((total - idle) / 100.0, total / 100.0))
}

/// The processes whose CPU time the report shows: the control plane's (from
/// `$LF_CLUSTER_DIR/pids`, as `tests/cluster/up.sh` records them), the operator (the parent) and
/// this driver.
fn watched_processes() -> Vec<(String, String)> {
    let mut procs = Vec::new();
    if let Ok(dir) = std::env::var("LF_CLUSTER_DIR") {
        for line in std::fs::read_to_string(format!("{dir}/pids"))
            .unwrap_or_default()
            .lines()
        {
            if let Some((pid, name)) = line.split_once(' ') {
                procs.push((pid.to_string(), name.trim().to_string()));
            }
        }
    }
    procs.push((
        std::os::unix::process::parent_id().to_string(),
        "the operator (benchmark's main process)".into(),
    ));
    procs.push((
        std::process::id().to_string(),
        "this driver (creates, watches)".into(),
    ));
    procs
}

fn cpu_snapshot(procs: &[(String, String)]) -> (Vec<f64>, Option<(f64, f64)>) {
    (
        procs
            .iter()
            .map(|(pid, _)| cpu_seconds(pid).unwrap_or(f64::NAN))
            .collect(),
        machine_cpu(),
    )
}

async fn scrape(client: &Client) -> Samples {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a GET request");
    match client.request_text(req).await {
        Ok(text) => parse_prometheus(&text),
        Err(e) => {
            eprintln!("driver: cannot read the API server's /metrics: {e}");
            Samples::new()
        }
    }
}

/// The operator's permissions from the Helm chart: the `rules` of the first document of
/// `charts/templates/rbac.yaml` (the ClusterRole; only its metadata is templated).
fn chart_rules() -> Vec<PolicyRule> {
    let doc = CHART_RBAC.split("\n---").next().unwrap_or_default();
    let rules = &doc[doc
        .find("\nrules:")
        .expect("the chart's ClusterRole has rules")
        + 1..];
    let value: serde_yaml::Value = serde_yaml::from_str(rules).expect("the chart's rules parse");
    serde_yaml::from_value(value["rules"].clone()).expect("the chart's rules are PolicyRules")
}

/// Installs the CRD (server-side apply) and waits until it is Established.
async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = FineTuneJob::definition();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply(BENCH_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("install the FineTuneJob CRD");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let established = crds.get(&name).await.ok().is_some_and(|c| {
            c.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            return;
        }
        assert!(Instant::now() < deadline, "the CRD is not Established");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The operator's ServiceAccount, bound to the chart's ClusterRole; waits until RBAC lets it
/// watch FineTuneJobs, then returns a bound token for it.
async fn operator_identity(client: &Client, ns: &str) -> String {
    let pp = PostParams::default();
    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    };
    let sa = ServiceAccount {
        metadata: meta(OPERATOR_SA),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&pp, &sa)
        .await
        .expect("create the operator's ServiceAccount");
    let role_name = format!("{ns}-operator");
    let role = ClusterRole {
        metadata: meta(&role_name),
        rules: Some(chart_rules()),
        ..Default::default()
    };
    Api::<ClusterRole>::all(client.clone())
        .create(&pp, &role)
        .await
        .expect("create the operator's ClusterRole");
    let binding = ClusterRoleBinding {
        metadata: meta(&role_name),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: role_name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: OPERATOR_SA.into(),
            namespace: Some(ns.into()),
            ..Default::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&pp, &binding)
        .await
        .expect("bind the operator's ClusterRole");
    let user = format!("system:serviceaccount:{ns}:{OPERATOR_SA}");
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                group: Some("lf-operator.io".into()),
                resource: Some("finetunejobs".into()),
                verb: Some("watch".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reviews
        .create(&pp, &review)
        .await
        .ok()
        .and_then(|r| r.status)
        .is_some_and(|s| s.allowed)
    {
        assert!(
            Instant::now() < deadline,
            "RBAC does not let the operator's ServiceAccount watch FineTuneJobs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(OPERATOR_SA, &pp, &request)
        .await
        .expect("a token for the operator's ServiceAccount")
        .status
        .expect("the TokenRequest's status")
        .token
        .expect("a token in the TokenRequest's status")
}

/// Deletes what the benchmark made on the cluster (best effort; the namespace's deletion goes on
/// in the cluster after this returns). The CRD stays: other namespaces may hold FineTuneJobs.
async fn clean_up(client: &Client, ns: &str, identity: Identity) {
    let dp = DeleteParams::background();
    if let Err(e) = Api::<Namespace>::all(client.clone()).delete(ns, &dp).await {
        eprintln!("driver: cannot delete namespace {ns}: {e}");
    }
    if identity == Identity::ServiceAccount {
        let name = format!("{ns}-operator");
        let _ = Api::<ClusterRoleBinding>::all(client.clone())
            .delete(&name, &dp)
            .await;
        let _ = Api::<ClusterRole>::all(client.clone())
            .delete(&name, &dp)
            .await;
    }
}

/// Waits (up to 10 minutes) until the namespaces of earlier runs that are being deleted are gone:
/// while one terminates,
/// its jobs lose their pods and children, and the operator, which watches every namespace, would
/// reconcile them during this run.
async fn wait_for_earlier_namespaces(client: &Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut said = false;
    loop {
        let earlier: Vec<String> = namespaces
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| {
                n.name_any().starts_with("lf-scale-")
                    && n.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
            })
            .map(|n| n.name_any())
            .collect();
        if earlier.is_empty() || Instant::now() > deadline {
            return;
        }
        if !said {
            eprintln!(
                "driver: waiting until the namespaces of earlier runs are deleted: {}",
                earlier.join(", ")
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn json_len<T: serde::Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(0, |b| b.len())
}

async fn next_command(stdin: &mut Lines<BufReader<Stdin>>) -> String {
    stdin.next_line().await.ok().flatten().unwrap_or_default()
}

/// The child of `--apiserver kubeconfig`, with the kubeconfig's identity: installs the CRD, makes a
/// namespace `lf-scale-<unix time>` (and, for `--operator-identity serviceaccount`, the operator's
/// ServiceAccount and ClusterRole), watches the namespace, and speaks lines on stdout:
/// `ready NAMESPACE TOKEN|-`; after `go` on stdin, `created FIRST LAST` and `applied T1,...` as
/// the fake's child does; after `report`, `report JSON` (the API server's metrics over the
/// window from `go` until then, CPU time per process, Failed jobs); after `cleanup` or the end of
/// stdin it deletes the namespace and exits.
async fn drive(args: &Args) {
    let n = args.jobs;
    let client = Client::try_default()
        .await
        .expect("a Kubernetes client from KUBECONFIG");
    let version = client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_else(|e| format!("unknown ({e})"));
    install_crd(&client).await;
    wait_for_earlier_namespaces(&client).await;
    let ns = format!(
        "lf-scale-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("create the benchmark's namespace");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let token = match args.identity {
        Identity::ServiceAccount => operator_identity(&client, &ns).await,
        Identity::Kubeconfig => "-".into(),
    };
    let names = job_names(n);
    let (listed, all_done, progress) = watch_applied(&client, &ns, &names);
    if tokio::time::timeout(Duration::from_secs(60), listed)
        .await
        .is_err()
    {
        eprintln!("driver: the namespace's watches did not start");
        clean_up(&client, &ns, args.identity).await;
        std::process::exit(1);
    }
    println!("ready {ns} {token}");
    if next_command(&mut stdin).await != "go" {
        clean_up(&client, &ns, args.identity).await;
        return;
    }

    let procs = watched_processes();
    let before = scrape(&client).await;
    let cpu_before = cpu_snapshot(&procs);
    let http_before = HTTP_LOG.snapshot();
    let t0 = Instant::now();
    let jobs = jobs(n, &ns);
    let (first, last) = create_all(client.clone(), &ns, &jobs, args.create_concurrency()).await;
    drop(jobs);
    println!("created {} {}", unix_ns(first), unix_ns(last));
    let timeout = args.timeout();
    if tokio::time::timeout(timeout, all_done.notified())
        .await
        .is_err()
    {
        let (remaining, missing) = {
            let p = progress.lock().unwrap_or_else(|e| e.into_inner());
            let missing: Vec<String> = PARTS
                .iter()
                .enumerate()
                .map(|(part, what)| {
                    let n = p.masks.iter().filter(|m| *m & (1 << part) == 0).count();
                    format!("{what} missing for {n}")
                })
                .collect();
            (p.remaining, missing)
        };
        println!(
            "timeout after {timeout:?}: {remaining} of {n} jobs not planned and applied ({})",
            missing.join(", ")
        );
        clean_up(&client, &ns, args.identity).await;
        std::process::exit(1);
    }
    let stamps: Vec<String> = progress
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .done
        .iter()
        .map(|t| unix_ns(t.unwrap_or(UNIX_EPOCH)).to_string())
        .collect();
    println!("applied {}", stamps.join(","));

    if next_command(&mut stdin).await == "report" {
        let wall = t0.elapsed().as_secs_f64();
        let cpu_after = cpu_snapshot(&procs);
        let after = scrape(&client).await;
        let driver = HTTP_LOG.snapshot().since(&http_before);
        let listed = Api::<FineTuneJob>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .map(|l| l.items);
        let failed = listed.as_ref().map_or(-1, |items| {
            items
                .iter()
                .filter(|j| {
                    j.status
                        .as_ref()
                        .is_some_and(|s| s.phase == lf_api::status::Phase::Failed)
                })
                .count() as i64
        });
        // What the operator's cache holds per job: the FineTuneJob as the API server serves it.
        let (mut object_bytes, mut managed_bytes) = (0, 0);
        for j in listed.iter().flatten() {
            object_bytes += json_len(j);
            managed_bytes += json_len(&j.metadata.managed_fields);
        }
        drop(listed);
        let window = Window { before, after };
        let mut report = report(
            &window,
            args.identity,
            wall,
            &procs,
            (&cpu_before, &cpu_after),
            &driver,
        );
        report["version"] = json!(version);
        report["failed"] = json!(failed);
        report["namespace"] = json!(ns);
        report["object_bytes"] = json!(object_bytes as f64 / n as f64);
        report["managed_fields_bytes"] = json!(managed_bytes as f64 / n as f64);
        println!("report {report}");
        let _ = next_command(&mut stdin).await;
    }
    clean_up(&client, &ns, args.identity).await;
}

type CpuSnapshot = (Vec<f64>, Option<(f64, f64)>);

/// What the API server did over the window, as JSON: `lines` to print, and the API server's own
/// count of the operator's requests.
fn report(
    w: &Window,
    identity: Identity,
    wall: f64,
    procs: &[(String, String)],
    (cpu_before, cpu_after): (&CpuSnapshot, &CpuSnapshot),
    driver: &HttpCounts,
) -> serde_json::Value {
    let all = |_: &Labels| true;
    let mut lines = Vec::new();
    let total = w.sum("apiserver_request_total", all);
    let (operator_schema, operator_level) = match identity {
        Identity::ServiceAccount => ("service-accounts", "workload-low"),
        Identity::Kubeconfig => ("exempt", "exempt"),
    };
    let who = |schema: &str| match schema {
        s if s == operator_schema && identity == Identity::ServiceAccount => " (the operator)",
        "exempt" if identity == Identity::Kubeconfig => {
            " (the operator and this benchmark's driver)"
        }
        "exempt" => " (this benchmark's driver)",
        "kube-system-service-accounts" => " (kube-controller-manager's controllers)",
        "kube-scheduler" => " (kube-scheduler)",
        _ => "",
    };
    let by_schema: Vec<String> = w
        .group(
            "apiserver_flowcontrol_dispatched_requests_total",
            &["flow_schema"],
            all,
        )
        .into_iter()
        .map(|(k, v)| format!("{} {}{}", k[0], thousands(v as u64), who(&k[0])))
        .collect();
    lines.push(format!(
        "all clients: {} requests in {wall:.1} s ({:.0}/s); dispatched by flow schema: {}",
        thousands(total as u64),
        total / wall,
        by_schema.join(", ")
    ));
    let dispatched = w.sum("apiserver_flowcontrol_dispatched_requests_total", |l| {
        label(l, "flow_schema") == operator_schema
    });
    let server_operator = match identity {
        Identity::ServiceAccount => dispatched,
        Identity::Kubeconfig => dispatched - driver.total as f64,
    };
    let codes: Vec<String> = w
        .group(
            "apiserver_request_total",
            &["code", "verb", "resource", "subresource"],
            |l| !label(l, "code").starts_with('2'),
        )
        .into_iter()
        .map(|(k, v)| {
            let res = if k[3].is_empty() {
                k[2].clone()
            } else {
                format!("{}/{}", k[2], k[3])
            };
            format!("{} {} {res} ×{}", k[0], k[1], thousands(v as u64))
        })
        .collect();
    lines.push(format!(
        "responses other than 2xx (all clients): {}",
        if codes.is_empty() {
            "none".to_string()
        } else {
            codes.join(", ")
        }
    ));
    let rejected: Vec<String> = w
        .group(
            "apiserver_flowcontrol_rejected_requests_total",
            &["priority_level", "reason"],
            all,
        )
        .into_iter()
        .map(|(k, v)| format!("{} {} ×{}", k[0], k[1], thousands(v as u64)))
        .collect();
    let seats = |name: &str| {
        w.gauge(name, |l| label(l, "priority_level") == operator_level)
            .map_or("?".into(), |v| format!("{v:.0}"))
    };
    lines.push(format!(
        "priority and fairness: the operator's priority level {operator_level} (nominal {} seats, now {}); queue wait by priority level: {}; rejected (429): {}",
        seats("apiserver_flowcontrol_nominal_limit_seats"),
        seats("apiserver_flowcontrol_current_limit_seats"),
        timed(
            w,
            "apiserver_flowcontrol_request_wait_duration_seconds",
            &["priority_level"],
            |_| true
        ),
        if rejected.is_empty() {
            "none".to_string()
        } else {
            rejected.join(", ")
        }
    ));
    let long_running = |l: &Labels| !matches!(label(l, "verb"), "WATCH" | "CONNECT");
    let served = w.sum("apiserver_request_duration_seconds_sum", long_running);
    let mut by_kind: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for (suffix, slot) in [("_sum", 0), ("_count", 1)] {
        for (l, v) in w.deltas(&format!("apiserver_request_duration_seconds{suffix}")) {
            if long_running(l) {
                let e = by_kind
                    .entry((label(l, "verb").to_string(), resource(l)))
                    .or_default();
                if slot == 0 {
                    e.0 += v;
                } else {
                    e.1 += v;
                }
            }
        }
    }
    let mut by_kind: Vec<_> = by_kind.into_iter().filter(|(_, (s, _))| *s > 0.0).collect();
    by_kind.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    let top: Vec<String> = by_kind
        .iter()
        .take(8)
        .map(|((verb, res), (sum, n))| {
            format!(
                "{verb} {res} {} × {:.1} ms = {sum:.1} s",
                thousands(*n as u64),
                1000.0 * sum / n.max(1.0)
            )
        })
        .collect();
    lines.push(format!(
        "latency summed over requests (apiserver_request_duration_seconds, all clients, watches left out; waiting for a CPU included): {served:.1} s, i.e. {:.1} requests in flight on average; most: {}",
        served / wall,
        top.join("; ")
    ));
    let etcd_total = w.sum("etcd_request_duration_seconds_sum", all);
    let etcd_n = w.sum("etcd_request_duration_seconds_count", all);
    lines.push(format!(
        "etcd as the API server sees it (etcd_request_duration_seconds): {} requests, {etcd_total:.1} s; by operation: {}",
        thousands(etcd_n as u64),
        timed(w, "etcd_request_duration_seconds", &["operation"], |_| true)
    ));
    let admission: Vec<String> = w
        .group(
            "apiserver_admission_step_admission_duration_seconds_sum",
            &["type", "operation"],
            all,
        )
        .into_iter()
        .map(|(k, v)| format!("{} {} {v:.2} s", k[0], k[1]))
        .collect();
    let plugins: Vec<String> = w
        .group(
            "apiserver_admission_controller_admission_duration_seconds_sum",
            &["name"],
            all,
        )
        .into_iter()
        .take(4)
        .map(|(k, v)| format!("{} {v:.2} s", k[0]))
        .collect();
    let field_validation = w.sum("field_validation_request_duration_seconds_sum", all);
    lines.push(format!(
        "admission: {} (slowest plugins: {}); field validation {field_validation:.2} s",
        admission.join(", "),
        plugins.join(", ")
    ));
    let watch_events = w.sum("apiserver_watch_events_total", all);
    let watch_bytes = w.sum("apiserver_watch_events_sizes_sum", all);
    let by_res: Vec<String> = w
        .group("apiserver_watch_events_total", &["resource"], all)
        .into_iter()
        .take(6)
        .map(|(k, v)| format!("{} {}", k[0], thousands(v as u64)))
        .collect();
    let closed: Vec<String> = w
        .group("apiserver_terminated_watchers_total", &["resource"], all)
        .into_iter()
        .map(|(k, v)| format!("{} ×{}", k[0], thousands(v as u64)))
        .collect();
    lines.push(format!(
        "watch events sent: {} ({:.1} MiB; {}); watches the API server closed because their client did not keep up (apiserver_terminated_watchers_total; the client resumes them from its last resourceVersion): {}",
        thousands(watch_events as u64),
        watch_bytes / MIB,
        by_res.join(", "),
        if closed.is_empty() {
            "none".to_string()
        } else {
            closed.join(", ")
        }
    ));
    let mut cpu = Vec::new();
    let mut listed = 0.0;
    for (i, (_, name)) in procs.iter().enumerate() {
        let used = cpu_after.0[i] - cpu_before.0[i];
        if used.is_finite() {
            listed += used;
            cpu.push(format!("{name} {used:.1} s"));
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |p| p.get());
    let machine = match (cpu_before.1, cpu_after.1) {
        (Some((b0, t0)), Some((b1, t1))) => format!(
            "; the machine was {:.0}% busy ({:.1} of {:.1} CPU-seconds on {cores} CPUs; other processes {:.1} s)",
            100.0 * (b1 - b0) / (t1 - t0).max(1e-9),
            b1 - b0,
            t1 - t0,
            (b1 - b0) - listed
        ),
        _ => String::new(),
    };
    let apiserver_cpu = w.sum("process_cpu_seconds_total", all);
    lines.push(format!(
        "CPU time in the window: {}{machine}; kube-apiserver {:.1} ms of CPU per request",
        cpu.join(", "),
        1000.0 * apiserver_cpu / total.max(1.0)
    ));
    json!({
        "lines": lines,
        "server_operator_requests": server_operator,
        "server_operator_how": match identity {
            Identity::ServiceAccount => "requests the API server dispatched in flow schema service-accounts".to_string(),
            Identity::Kubeconfig => format!("requests the API server dispatched in flow schema exempt, less the driver's {}; the API server's own loopback requests are exempt too", driver.total),
        },
        "driver_requests": driver.total,
        "apiserver_cpu_s": apiserver_cpu,
        "wall_s": wall,
    })
}

// ---- the operator's side -------------------------------------------------------------------

/// The API server: the fake here, the fake in a child process, or a real one with a child
/// process driving the benchmark.
enum ApiServer {
    InProcess(FakeApiServer),
    Process(Box<ChildServer>),
    Kube(Box<ChildServer>),
}

/// A child process (the fake API server, or the driver of a real one) and what it says.
struct ChildServer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    /// The fake's port.
    port: u16,
    /// With a real API server: the operator's configuration and the benchmark's namespace.
    config: Option<kube::Config>,
    namespace: String,
}

impl ApiServer {
    async fn start(args: &Args) -> ApiServer {
        if args.mode == Mode::InProcess {
            return ApiServer::InProcess(FakeApiServer::new().with_crd(&FineTuneJob::definition()));
        }
        let exe = std::env::current_exe().expect("the benchmark's own path");
        let role = if args.mode == Mode::Kubeconfig {
            "--drive-apiserver"
        } else {
            "--serve-apiserver"
        };
        let identity = match args.identity {
            Identity::ServiceAccount => "serviceaccount",
            Identity::Kubeconfig => "kubeconfig",
        };
        let mut child = tokio::process::Command::new(exe)
            .args([role, "--jobs", &args.jobs.to_string()])
            .args(["--timeout-s", &args.timeout().as_secs().to_string()])
            .args([
                "--create-concurrency",
                &args.create_concurrency().to_string(),
            ])
            .args(["--operator-identity", identity])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the child process");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let mut server = ChildServer {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            port: 0,
            config: None,
            namespace: NS.into(),
        };
        if args.mode == Mode::Process {
            server.port = server.next_line("listening").await.parse().expect("a port");
            return ApiServer::Process(Box::new(server));
        }
        let ready = server.next_line("ready").await;
        let (ns, token) = ready.split_once(' ').unwrap_or((&ready, "-"));
        let mut config = kube::Config::infer()
            .await
            .expect("a Kubernetes configuration from KUBECONFIG");
        if token != "-" {
            config.auth_info = kube::config::AuthInfo {
                token: Some(token.to_string().into()),
                ..Default::default()
            };
        }
        server.namespace = ns.to_string();
        server.config = Some(config);
        ApiServer::Kube(Box::new(server))
    }

    fn client(&self) -> Client {
        match self {
            ApiServer::InProcess(fake) => fake.client(),
            ApiServer::Process(server) => {
                let url = format!("http://127.0.0.1:{}", server.port)
                    .parse()
                    .expect("a valid URL");
                Client::try_from(kube::Config::new(url)).expect("a kube client")
            }
            ApiServer::Kube(server) => {
                Client::try_from(server.config.clone().expect("a configuration"))
                    .expect("a kube client")
            }
        }
    }

    fn child(&mut self) -> &mut ChildServer {
        match self {
            ApiServer::Process(s) | ApiServer::Kube(s) => s,
            ApiServer::InProcess(_) => unreachable!("only a child process speaks lines"),
        }
    }

    /// Waits until the controller watches everything it watches (its initial lists are done).
    async fn wait_watching(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let watching = match self {
                ApiServer::InProcess(fake) => watching(fake),
                _ => HTTP_LOG.watches.load(Ordering::Relaxed) >= CONTROLLER_WATCHES,
            };
            if watching {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the controller did not start its watches"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Requests the fake has answered so far.
    fn fake_requests(&self) -> usize {
        match self {
            ApiServer::InProcess(fake) => fake.requests().len(),
            _ => 0,
        }
    }

    /// Once the controller watches, creates every job (see [`create_all`]).
    async fn create_all(&mut self, n: usize, at_once: usize) -> (SystemTime, SystemTime) {
        let line = match self {
            ApiServer::InProcess(fake) => {
                let jobs = jobs(n, NS);
                return create_all(fake.client(), NS, &jobs, at_once).await;
            }
            ApiServer::Process(server) => server.next_line("created").await,
            ApiServer::Kube(server) => {
                server.say("go").await;
                server.next_line("created").await
            }
        };
        let mut times = line
            .split(' ')
            .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns.parse().unwrap_or(0)));
        let first = times.next().unwrap_or(UNIX_EPOCH);
        (first, times.next().unwrap_or(first))
    }

    async fn until_applied(&mut self, names: &[String], timeout: Duration) -> Vec<SystemTime> {
        match self {
            ApiServer::InProcess(fake) => until_applied(fake, names, timeout).await,
            _ => self
                .child()
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

    /// The driver's report on the API server (a real one only).
    async fn report(&mut self) -> Option<serde_json::Value> {
        let ApiServer::Kube(server) = self else {
            return None;
        };
        server.say("report").await;
        let line = server.next_line("report").await;
        Some(serde_json::from_str(&line).expect("the driver's report is JSON"))
    }

    /// Lets the driver delete its namespace, and waits for it.
    async fn finish(&mut self) {
        if let ApiServer::Kube(server) = self {
            server.say("cleanup").await;
            drop(server.stdin.take());
            let _ = tokio::time::timeout(Duration::from_secs(60), server.child.wait()).await;
        }
    }

    /// The child's `VmHWM`, in MiB.
    fn child_hwm(&self) -> Option<f64> {
        match self {
            ApiServer::InProcess(_) => None,
            ApiServer::Process(s) | ApiServer::Kube(s) => {
                s.child.id().map(|pid| rss(&pid.to_string()).0)
            }
        }
    }
}

impl ChildServer {
    async fn next_line(&mut self, want: &str) -> String {
        let line = self
            .lines
            .next_line()
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        match line.strip_prefix(want) {
            Some(rest) => rest.trim().to_string(),
            None => {
                eprintln!("the child process said `{line}`, not `{want}`");
                std::process::exit(1);
            }
        }
    }

    async fn say(&mut self, what: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(format!("{what}\n").as_bytes()).await;
            let _ = stdin.flush().await;
        }
    }
}

fn reconciliations(m: &Metrics) -> u64 {
    ["ok", "error"]
        .iter()
        .map(|r| m.reconciliations.with_label_values(&[r]).get())
        .sum()
}

/// The operator's requests in the fake's log from `from` on: everything but the benchmark's own
/// creates and its final list of FineTuneJobs in the jobs' namespace.
fn fake_operator_requests(fake: &FakeApiServer, from: usize) -> HttpCounts {
    let mut counts = HttpCounts::default();
    let bench = format!("/namespaces/{NS}/finetunejobs");
    for r in fake.requests().iter().skip(from) {
        if r.path.ends_with(&bench) && (r.method == "POST" || r.method == "GET") {
            continue;
        }
        let (verb, resource) = classify(&r.method, &r.path, &r.query);
        counts.total += 1;
        *counts
            .kinds
            .entry(format!("{verb} {resource}"))
            .or_insert(0) += 1;
        *counts.codes.entry(r.code).or_insert(0) += 1;
    }
    counts
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    init_tracing();
    let n = args.jobs;
    let timeout = args.timeout();
    match args.mode {
        Mode::Serve => return serve(n, timeout, args.create_concurrency()).await,
        Mode::Drive => return drive(&args).await,
        _ => {}
    }

    let names = job_names(n);
    let mut server = ApiServer::start(&args).await;
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
    server.wait_watching().await;
    let http_start = HTTP_LOG.snapshot();
    let fake_start = server.fake_requests();
    let (wall_first, wall_created) = server.create_all(n, args.create_concurrency()).await;
    let t_created = Instant::now();
    let reconciles_at_created = reconciliations(&metrics);

    let done = server.until_applied(&names, timeout).await;
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
    let http_applied = HTTP_LOG.snapshot();

    // Let the controller settle (its last status writes): no API request from the operator for a
    // second. Reconciliations alone do not count: once the jobs are applied, each job's resync
    // reconciles it again every 60 s, which (reading the caches, nothing changed) sends nothing.
    let operator_requests_now = |server: &ApiServer| match server {
        ApiServer::InProcess(_) => server.fake_requests() as u64,
        _ => HTTP_LOG.total.load(Ordering::Relaxed),
    };
    let mut seen = operator_requests_now(&server);
    let mut settled = reconciliations(&metrics);
    let mut last_change = Instant::now();
    while last_change.elapsed() < Duration::from_secs(1) && t_created.elapsed() < timeout {
        tokio::time::sleep(POLL).await;
        let now = operator_requests_now(&server);
        if now != seen {
            seen = now;
            settled = reconciliations(&metrics);
            last_change = Instant::now();
        }
    }
    let http_settled = HTTP_LOG.snapshot();
    let settled_s = (last_change.duration_since(t_created)
        + wall_created.duration_since(wall_first).unwrap_or_default())
    .as_secs_f64();
    let (hwm_end, rss_end) = rss("self");
    let child_hwm = server.child_hwm();
    let heap_peak = PEAK.load(Ordering::Relaxed);
    let heap_running = LIVE.load(Ordering::Relaxed);
    let errors = metrics.reconciliations.with_label_values(&["error"]).get();
    let error_kinds: Vec<String> = ["conflict", "api", "client", "missing_namespace"]
        .iter()
        .filter_map(|k| {
            let v = metrics.errors.with_label_values(&[k]).get();
            (v > 0).then(|| format!("{k} {v}"))
        })
        .collect();
    let report = server.report().await;
    let failed = match &report {
        Some(r) => r["failed"].as_i64().map_or(usize::MAX, |v| v as usize),
        None => {
            let api: Api<FineTuneJob> = Api::namespaced(server.client(), NS);
            api.list(&ListParams::default())
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
                .unwrap_or(usize::MAX)
        }
    };
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let heap_after_stop = LIVE.load(Ordering::Relaxed);
    server.finish().await;
    let operator_requests = match &server {
        ApiServer::InProcess(fake) => fake_operator_requests(fake, fake_start),
        _ => http_settled.since(&http_start),
    };

    let workers = std::thread::available_parallelism().map_or(0, |p| p.get());
    let rate = settled as f64 / settled_s;
    // From the first create until the last job was applied.
    let applied_s = wall_created
        .duration_since(wall_first)
        .unwrap_or_default()
        .as_secs_f64()
        + time_s;
    let rate_applied = reconciles_at_done as f64 / applied_s;
    let concurrency = match concurrency {
        0 => "unbounded".to_string(),
        c => c.to_string(),
    };
    let at_once = args.create_concurrency();
    let all_at_once = if at_once >= n {
        format!("all {n} create requests in flight at once")
    } else {
        format!("at most {at_once} create requests in flight")
    };
    let (where_, created_by) = match &server {
        ApiServer::InProcess(_) => (
            "in-process fake API server (same process, same tokio runtime)".to_string(),
            String::new(),
        ),
        ApiServer::Process(_) => (
            "fake API server in a child process, HTTP/1.1 on 127.0.0.1".to_string(),
            ", from the API server's process".to_string(),
        ),
        ApiServer::Kube(s) => {
            let version = report
                .as_ref()
                .and_then(|r| r["version"].as_str())
                .unwrap_or("?");
            let url = s
                .config
                .as_ref()
                .map_or(String::new(), |c| c.cluster_url.to_string());
            let who = match args.identity {
                Identity::ServiceAccount => format!(
                    "as ServiceAccount {}/{OPERATOR_SA} with the Helm chart's ClusterRole (a bound token; priority and fairness: flow schema service-accounts)",
                    s.namespace
                ),
                Identity::Kubeconfig => "as the kubeconfig's user (for the test cluster's admin, system:masters: exempt from priority and fairness)".to_string(),
            };
            (
                format!(
                    "real Kubernetes API server {version} at {url} (HTTPS, HTTP/1.1: kube-rs has no HTTP/2), namespace {}; the operator connects {who}",
                    s.namespace
                ),
                ", by a separate driver process with the kubeconfig's identity (exempt from priority and fairness)".to_string(),
            )
        }
    };
    println!("scale_bench: {n} FineTuneJobs (Llama-3-8B LoRA on one 24 GiB GPU), {where_}; controller concurrency {concurrency}; {workers} CPU(s)");
    println!(
        "  created concurrently ({all_at_once}{created_by}) in {:.2} s; {reconciles_at_created} reconciliations had already run by then",
        wall_created.duration_since(wall_first).unwrap_or_default().as_secs_f64()
    );
    println!(
        "  all {n} planned and applied (status.plan; ServiceAccount, Role, RoleBinding, ConfigMap, Service, Indexed Job): {time_s:.2} s after the last create (per job: p50 {:.2} s, p90 {:.2} s, p99 {:.2} s)",
        pct(0.5),
        pct(0.9),
        pct(0.99),
    );
    println!(
        "  reconciliations: {reconciles_at_done} from the first create until the last job was applied ({:.2} per job, {rate_applied:.0}/s); {settled} until the controller settled at {settled_s:.2} s ({:.2} per job, {rate:.0}/s){}; {errors} failed{}; {failed} jobs Failed",
        reconciles_at_done as f64 / n as f64,
        settled as f64 / n as f64,
        if settled_s > 60.0 {
            " — longer than the controller's 60 s resync (the scenario tests' setting), so these include each job's resync reconciliation"
        } else {
            ""
        },
        if error_kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", error_kinds.join(", "))
        },
    );
    let counted_how = match &server {
        ApiServer::InProcess(_) => "the fake's request log, less the benchmark's creates",
        _ => "counted in this process from kube-client's per-request `HTTP` span; a retried request counts each time",
    };
    let per_job = operator_requests.total as f64 / n as f64;
    let until_applied = match &server {
        ApiServer::InProcess(_) => None,
        _ => Some(http_applied.since(&http_start)),
    };
    if let Some(a) = &until_applied {
        println!(
            "  the operator's API requests from the first create until the last job was applied ({counted_how}): {} ({:.1} per job): {}; responses other than 2xx: {}",
            thousands(a.total),
            a.total as f64 / n as f64,
            a.breakdown(),
            a.non_2xx(),
        );
    }
    println!(
        "  the operator's API requests from the first create until the controller settled{}: {} ({per_job:.1} per job): {}; responses other than 2xx: {}",
        if until_applied.is_some() {
            String::new()
        } else {
            format!(" ({counted_how})")
        },
        thousands(operator_requests.total),
        operator_requests.breakdown(),
        operator_requests.non_2xx(),
    );
    if !matches!(server, ApiServer::InProcess(_)) {
        println!(
            "  before that, to start: {} requests (the initial lists and watches)",
            http_start.total
        );
    }
    if let Some(r) = &report {
        let server_count = r["server_operator_requests"].as_f64().unwrap_or(f64::NAN);
        println!(
            "  the API server's own count of them ({}, from its /metrics before and after): {} ({:.1} per job)",
            r["server_operator_how"].as_str().unwrap_or(""),
            thousands(server_count.max(0.0) as u64),
            server_count / n as f64
        );
        println!("  what the API server did meanwhile (its /metrics, over the driver's window from just before the first create until the controller settled):");
        for line in r["lines"].as_array().into_iter().flatten() {
            println!("    {}", line.as_str().unwrap_or_default());
        }
    }
    if let Some(r) = &report {
        println!(
            "  a FineTuneJob as the real API server serves it (and the operator caches it): {:.1} KiB of JSON, {:.1} KiB of it metadata.managedFields",
            r["object_bytes"].as_f64().unwrap_or(f64::NAN) / 1024.0,
            r["managed_fields_bytes"].as_f64().unwrap_or(f64::NAN) / 1024.0,
        );
    }
    match child_hwm {
        Some(child) => {
            println!("  peak RSS (VmHWM) of the operator process (controller, kube client, this benchmark's bookkeeping; no API server, no creating client): {hwm_before:.1} MiB before the controller starts, {hwm_done:.1} MiB when all were applied, {hwm_end:.1} MiB at the end (RSS now {rss_end:.1} MiB)");
            if matches!(server, ApiServer::Kube(_)) {
                println!("  the driver process (not the operator): peak RSS {child:.1} MiB");
            } else {
                println!(
                    "  the fake API server process (not the operator): peak RSS {child:.1} MiB"
                );
            }
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
    let target_s = if matches!(server, ApiServer::Kube(_)) {
        TARGET_REAL_S
    } else {
        TARGET_FAKE_S
    };
    println!(
        "  time {time_s:.2} s / target {target_s} s = {:.2}",
        time_s / target_s
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
    let mode = match &server {
        ApiServer::InProcess(_) => "in-process",
        ApiServer::Process(_) => "process",
        ApiServer::Kube(_) => "kubeconfig",
    };
    let heap_operator = if child_hwm.is_some() {
        heap_peak
    } else {
        heap_peak.saturating_sub(heap_after_stop)
    };
    let mut summary = format!(
        "SUMMARY mode={mode} jobs={n} time_s={time_s:.2} target_s={target_s} rec_per_s={rate_applied:.0} rec_per_job={:.2} rec_per_job_settled={:.2} settled_s={settled_s:.1} req_per_job={} req_per_job_settled={per_job:.1} rss_mib={hwm_end:.1} rss_scope={} heap_peak_mib={:.1} errors={errors} failed={failed} non2xx={}",
        reconciles_at_done as f64 / n as f64,
        settled as f64 / n as f64,
        until_applied
            .as_ref()
            .map_or("-".to_string(), |a| format!("{:.1}", a.total as f64 / n as f64)),
        if child_hwm.is_some() { "operator" } else { "operator+fake" },
        mib(heap_operator),
        operator_requests
            .codes
            .iter()
            .filter(|(c, _)| !(200..300).contains(*c))
            .map(|(_, v)| v)
            .sum::<u64>(),
    );
    if let Some(r) = &report {
        let _ = write!(
            summary,
            " server_req_per_job={:.1}",
            r["server_operator_requests"].as_f64().unwrap_or(f64::NAN) / n as f64
        );
    }
    println!("{summary}");
    if failed > 0 {
        std::process::exit(1);
    }
}
