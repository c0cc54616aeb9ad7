//! Rendezvous through c10d's TCPStore: rank 0 hosts the store at `MASTER_ADDR:MASTER_PORT`, every
//! rank announces itself under a key, and every rank waits for all keys. When the deadline passes,
//! the keys present name the ranks that arrived, so the error names the ones that did not.

use std::ffi::CString;
use std::net::{TcpStream, ToSocketAddrs};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lf_api::runtime::env;

use crate::error::DistError;
use crate::ffi;

/// Where and how to meet the other ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RendezvousOptions {
    /// Rank 0's address (a pod DNS name in Kubernetes, 127.0.0.1 locally).
    pub master_addr: String,
    /// The TCPStore port rank 0 listens on.
    pub master_port: u16,
    /// Number of processes in the whole job.
    pub world_size: usize,
    /// This process' global rank, `0..world_size`.
    pub rank: usize,
    /// Bound on the rendezvous and, afterwards, on every collective (`ddp_timeout`).
    pub timeout: Duration,
}

impl RendezvousOptions {
    /// Reads `MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE` and `RANK` from the environment (the names
    /// of `lf_api::runtime::env`, set by the operator and the launcher).
    pub fn from_env(timeout: Duration) -> Result<Self, DistError> {
        Self::from_lookup(|name| std::env::var(name).ok(), timeout)
    }

    /// Like [`from_env`](Self::from_env) with an arbitrary variable lookup (tests, config files).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        timeout: Duration,
    ) -> Result<Self, DistError> {
        let get = |var: &'static str| -> Result<String, DistError> {
            match lookup(var) {
                Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
                _ => Err(DistError::Env {
                    var,
                    message:
                        "is not set (the operator's pod spec or lf-trainer's launcher sets it)"
                            .into(),
                }),
            }
        };
        let number = |var: &'static str| -> Result<usize, DistError> {
            let raw = get(var)?;
            raw.parse::<usize>().map_err(|_| DistError::Env {
                var,
                message: format!("{raw:?} is not a non-negative integer"),
            })
        };
        let raw_port = get(env::MASTER_PORT)?;
        let master_port = raw_port.parse::<u16>().map_err(|_| DistError::Env {
            var: env::MASTER_PORT,
            message: format!("{raw_port:?} is not a TCP port (1-65535)"),
        })?;
        let opts = RendezvousOptions {
            master_addr: get(env::MASTER_ADDR)?,
            master_port,
            world_size: number(env::WORLD_SIZE)?,
            rank: number(env::RANK)?,
            timeout,
        };
        opts.validate()?;
        Ok(opts)
    }

    /// Checks the options for consistency.
    pub fn validate(&self) -> Result<(), DistError> {
        let op = "rendezvous options";
        if self.master_addr.is_empty() {
            return Err(DistError::invalid(op, "master_addr is empty"));
        }
        if self.master_port == 0 {
            return Err(DistError::invalid(op, "master_port is 0"));
        }
        if self.world_size == 0 {
            return Err(DistError::invalid(op, "world_size is 0"));
        }
        if self.world_size > i32::MAX as usize {
            return Err(DistError::invalid(
                op,
                format!("world_size {} is too large", self.world_size),
            ));
        }
        if self.rank >= self.world_size {
            return Err(DistError::invalid(
                op,
                format!(
                    "rank {} is not below world_size {}",
                    self.rank, self.world_size
                ),
            ));
        }
        if self.timeout.is_zero() {
            return Err(DistError::invalid(op, "timeout is zero"));
        }
        Ok(())
    }

    /// `host:port` as shown in messages (IPv6 literals in brackets).
    pub fn address(&self) -> String {
        if self.master_addr.contains(':') && !self.master_addr.starts_with('[') {
            format!("[{}]:{}", self.master_addr, self.master_port)
        } else {
            format!("{}:{}", self.master_addr, self.master_port)
        }
    }

    /// Whether the master address is a loopback address (all ranks on this machine).
    pub fn is_loopback(&self) -> bool {
        let a = self
            .master_addr
            .trim_start_matches('[')
            .trim_end_matches(']');
        a == "localhost"
            || a == "::1"
            || a.parse::<std::net::Ipv4Addr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    }
}

/// An owned, connected TCPStore on which all ranks have arrived.
pub(crate) struct Store {
    raw: NonNull<ffi::RawStore>,
}

impl Store {
    pub(crate) fn as_ptr(&self) -> *mut ffi::RawStore {
        self.raw.as_ptr()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: `raw` came from lf_dist_store_new and is freed exactly once, here.
        unsafe { ffi::lf_dist_store_free(self.raw.as_ptr()) }
    }
}

fn millis(d: Duration) -> i64 {
    d.as_millis().clamp(1, i64::MAX as u128) as i64
}

/// Connects to (rank 0: hosts) the store and waits until every rank has arrived, all within
/// `opts.timeout`. Returns the store and the deadline that applied.
/// Groups created so far by this process. Every rank creates its groups in the same order, so the
/// n-th group of every rank meets under the same key prefix, and several groups (e.g. NCCL for
/// CUDA tensors plus Gloo for CPU ones) can share `MASTER_PORT`.
static GROUP_SEQ: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn rendezvous(opts: &RendezvousOptions) -> Result<Store, DistError> {
    opts.validate()?;
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let fail = |missing_ranks: Vec<usize>, message: String| DistError::Rendezvous {
        rank: opts.rank,
        addr: opts.address(),
        missing_ranks,
        message,
    };
    if opts.rank != 0 {
        // TCPStore's own connect loop retries with backoff and can overrun its timeout by a lot;
        // waiting for the listening socket here keeps the whole rendezvous inside the deadline.
        wait_for_listener(opts, deadline).map_err(|last| {
            fail(
                vec![0],
                format!(
                    "rank 0 never opened the store within {:.1}s (missing ranks: [0]; which other \
                     ranks arrived is unknown without the store); last error: {last}. Check that \
                     rank 0 is running and that {} resolves and is reachable from this host",
                    opts.timeout.as_secs_f64(),
                    opts.address()
                ),
            )
        })?;
    }
    let host = CString::new(opts.master_addr.as_str())
        .map_err(|_| DistError::invalid("rendezvous options", "master_addr contains a NUL byte"))?;
    let prefix = CString::new(format!(
        "lf-dist/{}",
        GROUP_SEQ.fetch_add(1, Ordering::SeqCst)
    ))
    .map_err(|_| DistError::invalid("rendezvous options", "bad key prefix"))?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    let mut raw = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    // SAFETY: valid C string and out-pointers; the shim catches every C++ exception.
    let status = unsafe {
        ffi::lf_dist_store_new(
            host.as_ptr(),
            opts.master_port,
            (opts.rank == 0) as i32,
            millis(remaining),
            prefix.as_ptr(),
            &mut raw,
            &mut err,
        )
    };
    if status != ffi::STATUS_OK {
        // SAFETY: err was set by the shim.
        let message = unsafe { ffi::take_error(err) };
        let what = if opts.rank == 0 {
            "hosting"
        } else {
            "connecting to"
        };
        return Err(fail(
            if opts.rank == 0 { vec![] } else { vec![0] },
            format!("{what} the TCPStore: {message}"),
        ));
    }
    let store = Store {
        raw: NonNull::new(raw).ok_or_else(|| fail(vec![], "the shim returned no store".into()))?,
    };
    let mut arrived = vec![0u8; opts.world_size];
    let remaining = deadline.saturating_duration_since(Instant::now());
    let mut err = std::ptr::null_mut();
    // SAFETY: `arrived` has world_size entries, as the shim expects.
    let status = unsafe {
        ffi::lf_dist_store_arrive(
            store.as_ptr(),
            opts.rank as i32,
            opts.world_size as i32,
            millis(remaining),
            arrived.as_mut_ptr(),
            &mut err,
        )
    };
    match status {
        ffi::STATUS_OK => Ok(store),
        ffi::STATUS_RENDEZVOUS_INCOMPLETE | ffi::STATUS_RENDEZVOUS_ABORTED => {
            // SAFETY: err was set by the shim.
            let detail = unsafe { ffi::take_error(err) };
            let missing: Vec<usize> = (0..opts.world_size).filter(|&r| arrived[r] == 0).collect();
            let present: Vec<usize> = (0..opts.world_size).filter(|&r| arrived[r] == 1).collect();
            let unknown: Vec<usize> = (0..opts.world_size).filter(|&r| arrived[r] == 2).collect();
            let who = if status == ffi::STATUS_RENDEZVOUS_ABORTED {
                format!(
                    "rank 0 timed out (this rank waited {:.1}s)",
                    start.elapsed().as_secs_f64()
                )
            } else {
                format!("timed out after {:.1}s", start.elapsed().as_secs_f64())
            };
            let mut message = format!(
                "{who} waiting for {} of {} ranks: missing ranks {:?} (arrived: {:?})",
                missing.len() + unknown.len(),
                opts.world_size,
                missing,
                present
            );
            if !unknown.is_empty() {
                message.push_str(&format!(", store unreachable for ranks {unknown:?}"));
            }
            message.push_str(&format!(
                "; check that every pod/process of the job started and can reach {} ({detail})",
                opts.address()
            ));
            Err(fail(missing, message))
        }
        _ => {
            // SAFETY: err was set by the shim.
            let message = unsafe { ffi::take_error(err) };
            let missing: Vec<usize> = if opts.rank == 0 { vec![] } else { vec![0] };
            Err(fail(
                missing,
                format!(
                    "lost the store while waiting for the other ranks (did rank 0 exit?): {message}"
                ),
            ))
        }
    }
}

/// Polls until a TCP connection to the master succeeds (the store is listening) or the deadline
/// passes. Name resolution is retried too: a headless Service's DNS record appears only once the
/// pod is running. Returns the last error on timeout.
fn wait_for_listener(opts: &RendezvousOptions, deadline: Instant) -> Result<(), String> {
    let mut last = String::from("no attempt made");
    let mut pause = Duration::from_millis(50);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(last);
        }
        match (opts.master_addr.as_str(), opts.master_port).to_socket_addrs() {
            Ok(addrs) => {
                for addr in addrs {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(2))) {
                        Ok(_) => return Ok(()),
                        Err(e) => last = format!("connecting to {addr}: {e}"),
                    }
                }
            }
            Err(e) => last = format!("resolving {}: {e}", opts.address()),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn reads_the_operator_environment() {
        let o = RendezvousOptions::from_lookup(
            lookup(&[
                ("MASTER_ADDR", "job-0.svc"),
                ("MASTER_PORT", "29500"),
                ("WORLD_SIZE", "4"),
                ("RANK", "3"),
            ]),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(o.master_addr, "job-0.svc");
        assert_eq!((o.master_port, o.world_size, o.rank), (29500, 4, 3));
        assert_eq!(o.address(), "job-0.svc:29500");
        assert!(!o.is_loopback());
    }

    #[test]
    fn names_the_bad_variable() {
        let e = RendezvousOptions::from_lookup(
            lookup(&[
                ("MASTER_ADDR", "a"),
                ("MASTER_PORT", "99999"),
                ("WORLD_SIZE", "2"),
                ("RANK", "0"),
            ]),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(e.to_string().contains("MASTER_PORT"), "{e}");
        let e = RendezvousOptions::from_lookup(
            lookup(&[
                ("MASTER_ADDR", "a"),
                ("MASTER_PORT", "1"),
                ("WORLD_SIZE", "2"),
            ]),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(e.to_string().contains("RANK"), "{e}");
        let e = RendezvousOptions::from_lookup(
            lookup(&[
                ("MASTER_ADDR", "a"),
                ("MASTER_PORT", "1"),
                ("WORLD_SIZE", "2"),
                ("RANK", "2"),
            ]),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not below world_size"), "{e}");
    }

    #[test]
    fn loopback_detection() {
        let mut o = RendezvousOptions {
            master_addr: "127.0.0.1".into(),
            master_port: 1,
            world_size: 1,
            rank: 0,
            timeout: Duration::from_secs(1),
        };
        assert!(o.is_loopback());
        o.master_addr = "localhost".into();
        assert!(o.is_loopback());
        o.master_addr = "::1".into();
        assert!(o.is_loopback());
        assert_eq!(o.address(), "[::1]:1");
        o.master_addr = "10.0.0.1".into();
        assert!(!o.is_loopback());
    }
}
