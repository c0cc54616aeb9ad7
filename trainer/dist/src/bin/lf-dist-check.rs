//! lf-dist-check: runs lf-dist's collectives as a real multi-process job. The integration tests and
//! scripts/gpu-check.sh start it once per rank; it is also a pre-flight tool inside a pod.
//!
//! ```text
//! lf-dist-check collectives           correctness of every collective (f32, bf16); prints "ok"
//! lf-dist-check bandwidth BYTES ITERS all-reduce bus bandwidth (rank 0 prints it)
//! lf-dist-check rendezvous            create the group, barrier, exit
//! lf-dist-check two-groups            two groups sharing MASTER_PORT, used interleaved
//! lf-dist-check die-after-first RANK  RANK exits with code 9 after the first all-reduce, the others keep reducing
//! lf-dist-check stall RANK            RANK sleeps instead of reducing, the others keep reducing
//! lf-dist-check cuda-peak MIB        allocator peak after allocating MIB MiB on cuda:LOCAL_RANK (no rendezvous)
//! lf-dist-check launch NPROC [NODE_RANK NNODES] -- PROGRAM ARGS...   the launcher (grace: LF_DIST_GRACE_MS)
//! ```
//! Rendezvous comes from MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK; the timeout from
//! LF_DIST_TIMEOUT_MS (default 30000); the device from LF_DIST_DEVICE (`cpu` default, `cuda`: the
//! GPU LOCAL_RANK). Failures print the error and exit with lf-api's exit code (4 = communication).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use lf_dist::{bandwidth_probe, launcher, DistError, ProcessGroup, RendezvousOptions};
use tch::{Device, Kind, Tensor};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(Failure::Dist(e)) => {
            eprintln!("lf-dist-check: {e}");
            ExitCode::from(e.exit_code().clamp(0, 255) as u8)
        }
        Err(Failure::Check(msg)) => {
            eprintln!("lf-dist-check: CHECK FAILED: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(msg)) => {
            eprintln!(
                "lf-dist-check: {msg}\nusage: see the doc comment of src/bin/lf-dist-check.rs"
            );
            ExitCode::from(2)
        }
    }
}

enum Failure {
    Dist(DistError),
    Check(String),
    Usage(String),
}

impl From<DistError> for Failure {
    fn from(e: DistError) -> Self {
        Failure::Dist(e)
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, Failure> {
    args.get(i)
        .ok_or_else(|| Failure::Usage(format!("missing {what}")))?
        .parse()
        .map_err(|_| Failure::Usage(format!("bad {what}: {:?}", args[i])))
}

fn run(args: &[String]) -> Result<i32, Failure> {
    let cmd = args.first().map(String::as_str).unwrap_or("");
    if cmd == "launch" {
        return launch(&args[1..]);
    }
    if cmd == "cuda-peak" {
        return cuda_peak(args);
    }
    let timeout_ms: u64 = std::env::var("LF_DIST_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let opts = RendezvousOptions::from_env(Duration::from_millis(timeout_ms))?;
    let device = match std::env::var("LF_DIST_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(
            std::env::var("LOCAL_RANK")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        ),
        Ok("cpu") | Err(_) => Device::Cpu,
        Ok(other) => {
            return Err(Failure::Usage(format!(
                "LF_DIST_DEVICE={other:?}: expected cpu or cuda"
            )))
        }
    };
    match cmd {
        "collectives" => {
            let pg = Rc::new(ProcessGroup::new(&opts, device)?);
            for kind in [Kind::Float, Kind::BFloat16] {
                collectives(&pg, kind)?;
                owned_gathers(&pg, kind)?;
            }
            pg.barrier()?;
            println!(
                "rank {} of {} ({:?}): ok",
                pg.rank(),
                pg.world_size(),
                pg.backend()
            );
            Ok(0)
        }
        "bandwidth" => {
            let bytes: usize = arg(args, 1, "BYTES")?;
            let iters: usize = arg(args, 2, "ITERS")?;
            let pg = ProcessGroup::new(&opts, device)?;
            let bw = bandwidth_probe(&pg, bytes, iters)?;
            if pg.rank() == 0 {
                println!("{bw}");
                println!("busbw_gbps={:.6}", bw.bus_gbps);
            }
            Ok(0)
        }
        "two-groups" => {
            // Two groups on the same MASTER_PORT (rank 0 hosts one store server for both).
            let a = ProcessGroup::new(&opts, device)?;
            let b = ProcessGroup::new(&opts, device)?;
            let mut x = Tensor::full([3], 1.0, (Kind::Float, device));
            let mut y = Tensor::full([3], 2.0, (Kind::Float, device));
            a.all_reduce_sum(&mut x)?;
            b.all_reduce_sum(&mut y)?;
            drop(b);
            a.all_reduce_sum(&mut x)?;
            let w = a.world_size() as f64;
            let (gx, gy) = (x.double_value(&[0]), y.double_value(&[0]));
            if gx != w * w || gy != 2.0 * w {
                return Err(Failure::Check(format!("two groups: got {gx} and {gy}")));
            }
            println!("rank {}: two groups ok", a.rank());
            Ok(0)
        }
        "rendezvous" => {
            let pg = ProcessGroup::new(&opts, device)?;
            pg.barrier()?;
            println!("rank {} of {}: rendezvous ok", pg.rank(), pg.world_size());
            Ok(0)
        }
        "die-after-first" | "stall" => {
            let victim: usize = arg(args, 1, "RANK")?;
            let pg = ProcessGroup::new(&opts, device)?;
            let mut t = Tensor::ones([1024], (Kind::Float, device));
            pg.all_reduce_sum(&mut t)?;
            if pg.rank() == victim {
                if cmd == "stall" {
                    std::thread::sleep(Duration::from_millis(timeout_ms * 4));
                    return Ok(0);
                }
                println!("rank {victim}: exiting mid-job");
                std::process::exit(9);
            }
            let start = Instant::now();
            for _ in 0..50 {
                if let Err(e) = pg.all_reduce_sum(&mut t) {
                    eprintln!("failed_after_ms={}", start.elapsed().as_millis());
                    return Err(e.into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(Failure::Check(format!(
                "rank {}: 50 all-reduces succeeded without rank {victim}",
                pg.rank()
            )))
        }
        other => Err(Failure::Usage(format!("unknown command {other:?}"))),
    }
}

/// Checks the CUDA caching allocator statistics the memory check relies on: after a reset, the
/// peak must cover one allocation of MIB MiB and not exceed it by more than 2 MiB (the allocator
/// rounds sizes up).
fn cuda_peak(args: &[String]) -> Result<i32, Failure> {
    let mib: i64 = arg(args, 1, "MIB")?;
    let dev: i64 = std::env::var("LOCAL_RANK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    lf_dist::cuda_reset_peak_stats(dev)?;
    let before = lf_dist::cuda_peak_allocated_bytes(dev).ok_or_else(|| {
        Failure::Check("no CUDA allocator statistics (built without `nccl`?)".into())
    })?;
    let t = Tensor::zeros(
        [mib * (1 << 20) / 4],
        (Kind::Float, Device::Cuda(dev as usize)),
    );
    tch::Cuda::synchronize(dev);
    let peak = lf_dist::cuda_peak_allocated_bytes(dev).unwrap_or(0);
    drop(t);
    let want = (mib as u64) << 20;
    println!("peak_bytes={peak} baseline_bytes={before} tensor_bytes={want}");
    if peak < want || peak > before + want + (2 << 20) {
        return Err(Failure::Check(format!(
            "peak {peak} B for a {want} B tensor (baseline {before} B)"
        )));
    }
    Ok(0)
}

fn launch(args: &[String]) -> Result<i32, Failure> {
    let sep = args
        .iter()
        .position(|a| a == "--")
        .ok_or_else(|| Failure::Usage("launch: missing `--` before the program".into()))?;
    let head = &args[..sep];
    let nproc: usize = arg(head, 0, "NPROC")?;
    let (node_rank, nnodes) = if head.len() >= 3 {
        (arg(head, 1, "NODE_RANK")?, arg(head, 2, "NNODES")?)
    } else {
        (0, 1)
    };
    let program = args
        .get(sep + 1)
        .map(PathBuf::from)
        .ok_or_else(|| Failure::Usage("launch: missing PROGRAM".into()))?;
    let rest: Vec<OsString> = args[sep + 2..].iter().map(OsString::from).collect();
    let mut l = launcher::Launcher::new(nproc, node_rank, nnodes);
    if let Some(ms) = std::env::var("LF_DIST_GRACE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        l = l.grace_period(Duration::from_millis(ms));
    }
    let exit = l.run(&program, &rest)?;
    eprintln!("launcher: {exit:?}");
    Ok(exit.code)
}

fn expect_equal(op: &str, kind: Kind, got: &Tensor, want: &Tensor) -> Result<(), Failure> {
    let diff = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[]);
    if got.kind() != kind || got.size() != want.size() || diff != 0.0 {
        return Err(Failure::Check(format!(
            "{op} ({kind:?}): got {:?} {:?}, want {:?}",
            got.kind(),
            Vec::<f64>::try_from(got.to_kind(Kind::Double).flatten(0, -1)).unwrap_or_default(),
            Vec::<f64>::try_from(want.to_kind(Kind::Double).flatten(0, -1)).unwrap_or_default()
        )));
    }
    Ok(())
}

/// Every collective with values whose sums are exact in bf16 (small integers).
/// Owned all-gathers (what ZeRO-3 prefetches with): two in flight with a reduction between them,
/// the inputs dropped by the caller right after the start, waited out of issue order.
fn owned_gathers(pg: &Rc<ProcessGroup>, kind: Kind) -> Result<(), Failure> {
    let opts = (kind, pg.device());
    let (r, w) = (pg.rank() as f64, pg.world_size() as i64);
    let start = |offset: f64| {
        let input = Tensor::arange(4, opts) + 10.0 * r + offset;
        let output = Tensor::zeros([4 * w], opts);
        ProcessGroup::all_gather_owned(pg, input, output)
    };
    let first = start(0.0)?;
    let second = start(100.0)?;
    let mut sum = Tensor::ones([3], opts);
    pg.all_reduce_sum(&mut sum)?;
    let want = |offset: f64| {
        (Tensor::arange(w, opts).unsqueeze(1) * 10.0
            + Tensor::arange(4, opts).unsqueeze(0)
            + offset)
            .flatten(0, -1)
    };
    expect_equal(
        "all_gather_owned (second)",
        kind,
        &second.wait()?,
        &want(100.0),
    )?;
    expect_equal("all_gather_owned (first)", kind, &first.wait()?, &want(0.0))?;
    expect_equal(
        "all_reduce_sum",
        kind,
        &sum,
        &Tensor::full([3], w as f64, opts),
    )?;
    Ok(())
}

fn collectives(pg: &ProcessGroup, kind: Kind) -> Result<(), Failure> {
    let (r, w) = (pg.rank() as f64, pg.world_size() as f64);
    let dev = pg.device();
    let opts = (kind, dev);

    // all-reduce: arange(7)·(r+1) + r summed over ranks = arange(7)·w(w+1)/2 + w(w−1)/2.
    let mut t = Tensor::arange(7, opts) * (r + 1.0) + r;
    pg.all_reduce_sum(&mut t)?;
    let want = Tensor::arange(7, opts) * (w * (w + 1.0) / 2.0) + w * (w - 1.0) / 2.0;
    expect_equal("all_reduce_sum", kind, &t, &want)?;

    // reduce-scatter: input[i] = i + 10·r, shard 5 → rank r gets (w·i + 10·w(w−1)/2) for its i.
    let shard = 5i64;
    let n = shard * pg.world_size() as i64;
    let input = Tensor::arange(n, opts) + 10.0 * r;
    let mut out = Tensor::zeros([shard], opts);
    pg.reduce_scatter_sum(&input, &mut out)?;
    let lo = shard * pg.rank() as i64;
    let want = Tensor::arange_start(lo, lo + shard, opts) * w + 10.0 * w * (w - 1.0) / 2.0;
    expect_equal("reduce_scatter_sum", kind, &out, &want)?;

    // all-gather: rank r contributes [10r, 10r+1, 10r+2] → concatenation in rank order.
    let input = Tensor::arange(3, opts) + 10.0 * r;
    let mut out = Tensor::zeros([3 * pg.world_size() as i64], opts);
    pg.all_gather(&input, &mut out)?;
    let want = (Tensor::arange(pg.world_size() as i64, opts).unsqueeze(1) * 10.0
        + Tensor::arange(3, opts).unsqueeze(0))
    .flatten(0, -1);
    expect_equal("all_gather", kind, &out, &want)?;

    // broadcast from the last rank, then from rank 0.
    for root in [pg.world_size() - 1, 0] {
        let mut t = Tensor::full([4], r + 1.0, opts);
        pg.broadcast(&mut t, root)?;
        expect_equal(
            "broadcast",
            kind,
            &t,
            &Tensor::full([4], root as f64 + 1.0, opts),
        )?;
    }
    pg.barrier()?;

    // Two operations in flight at once (the ZeRO-3 prefetch pattern), waited in issue order.
    let gather_in = Tensor::arange(3, opts) + 10.0 * r;
    let mut gathered = Tensor::zeros([3 * pg.world_size() as i64], opts);
    let scatter_in = Tensor::arange(n, opts) + 10.0 * r;
    let mut scattered = Tensor::zeros([shard], opts);
    let first = pg.all_gather_async(&gather_in, &mut gathered)?;
    let second = pg.reduce_scatter_sum_async(&scatter_in, &mut scattered)?;
    first.wait()?;
    second.wait()?;
    let want = (Tensor::arange(pg.world_size() as i64, opts).unsqueeze(1) * 10.0
        + Tensor::arange(3, opts).unsqueeze(0))
    .flatten(0, -1);
    expect_equal("all_gather_async", kind, &gathered, &want)?;
    let want = Tensor::arange_start(lo, lo + shard, opts) * w + 10.0 * w * (w - 1.0) / 2.0;
    expect_equal("reduce_scatter_sum_async", kind, &scattered, &want)?;

    // Bad arguments are rejected locally, before any communication.
    let mut strided = Tensor::zeros([4, 4], opts).transpose(0, 1);
    if !matches!(
        pg.all_reduce_sum(&mut strided),
        Err(DistError::InvalidArgument { .. })
    ) {
        return Err(Failure::Check(
            "a non-contiguous tensor was accepted".into(),
        ));
    }
    let mut wrong = Tensor::zeros([shard + 1], opts);
    if !matches!(
        pg.reduce_scatter_sum(&input, &mut wrong),
        Err(DistError::InvalidArgument { .. })
    ) {
        return Err(Failure::Check(
            "a reduce-scatter with mismatched sizes was accepted".into(),
        ));
    }
    Ok(())
}
