//! Gloo collectives, bandwidth and fault behaviour across real local processes (lf-dist-check).

mod common;

use std::time::Duration;

use common::{run_ranks, RankResult};

/// lf-api's exit code for communication failures.
const COMMUNICATION: i32 = 4;

fn all_ranks(world: usize) -> Vec<usize> {
    (0..world).collect()
}

fn assert_all_ok(results: &[RankResult]) {
    for r in results {
        assert_eq!(
            r.code,
            Some(0),
            "rank {} failed (hung: {}):\nstdout: {}\nstderr: {}",
            r.rank,
            r.hung,
            r.stdout,
            r.stderr
        );
    }
}

#[test]
fn collectives_are_exact_for_world_2_and_3_in_f32_and_bf16() {
    for world in [2, 3] {
        let results = run_ranks(
            world,
            &all_ranks(world),
            &["collectives"],
            20_000,
            Duration::from_secs(120),
        );
        assert_all_ok(&results);
        for r in &results {
            assert!(
                r.stdout
                    .contains(&format!("rank {} of {world} (Gloo): ok", r.rank)),
                "{}",
                r.stdout
            );
        }
    }
}

#[test]
fn two_groups_share_the_master_port() {
    let results = run_ranks(
        2,
        &[0, 1],
        &["two-groups"],
        20_000,
        Duration::from_secs(120),
    );
    assert_all_ok(&results);
    for r in &results {
        assert!(r.stdout.contains("two groups ok"), "{}", r.stdout);
    }
}

#[test]
fn bandwidth_probe_reports_a_positive_finite_bus_bandwidth() {
    let results = run_ranks(
        2,
        &[0, 1],
        &["bandwidth", "4194304", "5"],
        20_000,
        Duration::from_secs(120),
    );
    assert_all_ok(&results);
    let line = results[0]
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("busbw_gbps="))
        .unwrap_or_else(|| panic!("no busbw line in {:?}", results[0].stdout));
    let gbps: f64 = line.parse().expect("a number");
    assert!(gbps.is_finite() && gbps > 0.0, "busbw {gbps}");
    eprintln!(
        "Gloo, 2 local ranks: {}",
        results[0].stdout.lines().next().unwrap_or("")
    );
}

/// Every survivor must fail with a communication error naming its rank and the operation, within
/// the collective timeout (plus process start-up slack), never hang.
fn assert_survivors_fail(results: &[RankResult], victim: usize, timeout: Duration) {
    for r in results {
        if r.rank == victim {
            continue;
        }
        assert!(!r.hung, "rank {} hung:\n{}", r.rank, r.stderr);
        assert_eq!(
            r.code,
            Some(COMMUNICATION),
            "rank {}: {}\n{}",
            r.rank,
            r.stdout,
            r.stderr
        );
        assert!(
            r.stderr
                .contains(&format!("rank {}: all_reduce_sum failed", r.rank)),
            "rank {}: {}",
            r.rank,
            r.stderr
        );
        let failed_after: u64 = r
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("failed_after_ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no failed_after_ms in {}", r.stderr));
        assert!(
            Duration::from_millis(failed_after) <= timeout + Duration::from_secs(2),
            "rank {} took {failed_after} ms to notice",
            r.rank
        );
    }
}

#[test]
fn a_rank_exiting_mid_job_fails_every_other_rank() {
    let timeout = Duration::from_secs(5);
    // A non-root rank, and rank 0 (which also hosts the TCPStore).
    for (world, victim) in [(3, 1), (2, 0)] {
        let v = victim.to_string();
        let results = run_ranks(
            world,
            &all_ranks(world),
            &["die-after-first", &v],
            timeout.as_millis() as u64,
            Duration::from_secs(60),
        );
        let dead = results.iter().find(|r| r.rank == victim).expect("victim");
        assert_eq!(dead.code, Some(9), "{}", dead.stderr);
        assert_survivors_fail(&results, victim, timeout);
    }
}

#[test]
fn a_stalled_rank_makes_the_others_time_out() {
    let timeout = Duration::from_secs(3);
    let results = run_ranks(
        2,
        &[0, 1],
        &["stall", "1"],
        timeout.as_millis() as u64,
        Duration::from_secs(60),
    );
    assert_survivors_fail(&results, 1, timeout);
    let r0 = &results[0];
    assert!(r0.stderr.contains("Timed out"), "{}", r0.stderr);
}

#[test]
fn rendezvous_names_the_address_and_the_missing_rank() {
    let timeout = Duration::from_secs(3);
    let results = run_ranks(
        3,
        &[0, 1],
        &["rendezvous"],
        timeout.as_millis() as u64,
        Duration::from_secs(60),
    );
    for r in &results {
        assert_eq!(r.code, Some(COMMUNICATION), "rank {}: {}", r.rank, r.stderr);
        assert!(
            r.stderr.contains("rendezvous at 127.0.0.1:"),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.contains("missing ranks [2] (arrived: [0, 1])"),
            "{}",
            r.stderr
        );
        assert!(
            r.elapsed < timeout + Duration::from_secs(8),
            "took {:?}",
            r.elapsed
        );
    }
}

#[test]
fn rendezvous_without_rank_0_names_it_within_the_timeout() {
    let timeout = Duration::from_secs(2);
    let results = run_ranks(
        2,
        &[1],
        &["rendezvous"],
        timeout.as_millis() as u64,
        Duration::from_secs(60),
    );
    let r = &results[0];
    assert_eq!(r.code, Some(COMMUNICATION), "{}", r.stderr);
    assert!(
        r.stderr.contains("rendezvous at 127.0.0.1:"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("missing ranks: [0]"), "{}", r.stderr);
    assert!(
        r.elapsed < timeout + Duration::from_secs(8),
        "took {:?}",
        r.elapsed
    );
}
