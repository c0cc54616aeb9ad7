#!/usr/bin/env bash
# The operator at scale (issue 7): 1,000 FineTuneJobs created at once, reconciled by the real
# controller; prints the time until all are planned and applied, reconciliations per second, the
# operator's API requests per job, its peak RSS and the ratios to the targets (10 s on the fake API
# server, 30 s on a real one; 64 MiB). Three runs, then a table of them side by side:
#   1. the fake API server in the operator's process (as the scenario tests do);
#   2. the fake in a child process behind HTTP, so that the operator's own peak RSS is measured alone;
#   3. a real Kubernetes control plane (tests/cluster/up.sh: etcd, kube-apiserver,
#      kube-controller-manager, kube-scheduler; no nodes, so the trainer pods stay Pending), the
#      operator as a ServiceAccount with the Helm chart's ClusterRole.
#   scripts/bench_operator.sh [--jobs N] [--concurrency C] [other scale_bench flags]
# The cluster lives in a temporary directory, removed at the end; LF_BENCH_CLUSTER_DIR=DIR puts it
# in DIR instead and keeps DIR (its logs/ hold the API server's log) after stopping the cluster.
#
# Before/after: LF_BENCH_BASELINE=BIN (a scale_bench binary built from another revision, e.g.
# `git worktree add /tmp/base REV && (cd /tmp/base && cargo build --release -p lf-operator
# --example scale_bench)`) runs it too, each mode right before this tree's run of the same mode (so
# both see the same machine), and the table gets a baseline column beside each of this tree's.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release -p lf-operator --example scale_bench
bench="${CARGO_TARGET_DIR:-target}/release/examples/scale_bench"
baseline=${LF_BENCH_BASELINE:-}
if [ -n "$baseline" ] && [ ! -x "$baseline" ]; then
  echo "LF_BENCH_BASELINE=$baseline is not an executable scale_bench" >&2
  exit 2
fi

out=$(mktemp -d)
cluster=${LF_BENCH_CLUSTER_DIR:-}
keep_cluster=1
if [ -z "$cluster" ]; then
  cluster=$(mktemp -d /tmp/lf-bench-cluster.XXXXXX)
  keep_cluster=0
fi
cleanup() {
  tests/cluster/down.sh "$cluster" >/dev/null 2>&1 || true
  if [ "$keep_cluster" = 0 ]; then rm -rf "$cluster"; fi
  rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run MODE: the baseline (if any), then this tree's scale_bench, each output kept for the table.
columns=()
run() {
  local mode=$1
  shift
  if [ -n "$baseline" ]; then
    echo "== baseline ($baseline), --apiserver $mode"
    "$baseline" --apiserver "$mode" "$@" | tee "$out/$mode-baseline"
    columns+=("$out/$mode-baseline")
    echo
  fi
  echo "== this tree, --apiserver $mode"
  "$bench" --apiserver "$mode" "$@" | tee "$out/$mode"
  columns+=("$out/$mode")
  echo
}

run in-process "$@"
run process "$@"
tests/cluster/up.sh "$cluster"
(
  source "$cluster/env"
  run kubeconfig "$@"
  printf '%s\n' "${columns[@]}" >"$out/columns"
)
tests/cluster/down.sh "$cluster" >/dev/null
mapfile -t columns <"$out/columns"

# The table: one column per run, from each run's SUMMARY line. Reconciliations and requests per
# job count until the last job was applied (the clock's end), then until the controller settled
# (no API request from the operator for 1 s; past 60 s this includes each job's resync).
awk -v baseline="${baseline:+1}" '
  function field(line, key,   n, i, kv, parts) {
    n = split(line, parts, " ")
    for (i = 2; i <= n; i++) { split(parts[i], kv, "="); if (kv[1] == key) return kv[2] }
    return "-"
  }
  FNR == 1 { col++ }
  /^SUMMARY / { s[col] = $0 }
  END {
    split("fake, in-process|fake, child process|real kube-apiserver", modes, "|")
    per = baseline ? 2 : 1
    for (c = 1; c <= col; c++) {
      m = modes[int((c - 1) / per) + 1]
      head[c] = (baseline && c % 2 == 1) ? m " (base)" : m
    }
    width = baseline ? 24 : 20
    printf "%-44s", "scale_bench, " field(s[1], "jobs") " FineTuneJobs"
    for (c = 1; c <= col; c++) printf " %" width "s", head[c]
    printf "\n"
    n = split("time_s:all planned and applied (s)|target_s:target (s)|ratio:time / target|rec_per_s:reconciliations/s|rec_per_job:reconciliations per job|req_per_job:operator API requests per job|settled_s:controller settled (s)|rec_per_job_settled:  reconciliations per job by then|req_per_job_settled:  API requests per job by then|server_req_per_job:  the same, API server count|non2xx:operator responses other than 2xx|rss_mib:peak RSS (MiB)|rss_scope:  RSS of|rss_ratio:RSS / 64 MiB|heap_peak_mib:operator heap peak (MiB)|errors:failed reconciliations|failed:jobs Failed", rows, "|")
    for (r = 1; r <= n; r++) {
      split(rows[r], kl, ":")
      printf "%-44s", kl[2]
      for (c = 1; c <= col; c++) {
        if (kl[1] == "ratio") v = sprintf("%.2f", field(s[c], "time_s") / field(s[c], "target_s"))
        else if (kl[1] == "rss_ratio") v = sprintf("%.2f", field(s[c], "rss_mib") / 64)
        else v = field(s[c], kl[1])
        if (kl[1] == "heap_peak_mib" && c <= per) v = ">=" v
        printf " %" width "s", v
      }
      printf "\n"
    }
  }' "${columns[@]}"
