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
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release -p lf-operator --example scale_bench
bench="${CARGO_TARGET_DIR:-target}/release/examples/scale_bench"

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

"$bench" --apiserver in-process "$@" | tee "$out/in-process"
echo
"$bench" --apiserver process "$@" | tee "$out/process"
echo
tests/cluster/up.sh "$cluster"
(source "$cluster/env" && "$bench" --apiserver kubeconfig "$@") | tee "$out/kubeconfig"
tests/cluster/down.sh "$cluster" >/dev/null
echo

# The table: one column per run, from each run's SUMMARY line. Reconciliations and requests per
# job count until the last job was applied (the clock's end), then until the controller settled
# (no reconciliation for 1 s; past 60 s this includes each job's resync).
awk '
  function field(line, key,   n, i, kv, parts) {
    n = split(line, parts, " ")
    for (i = 2; i <= n; i++) { split(parts[i], kv, "="); if (kv[1] == key) return kv[2] }
    return "-"
  }
  FNR == 1 { col++ }
  /^SUMMARY / { s[col] = $0 }
  END {
    head[1] = "fake, in-process"; head[2] = "fake, child process"; head[3] = "real kube-apiserver"
    printf "%-44s %20s %20s %20s\n", "scale_bench, " field(s[1], "jobs") " FineTuneJobs", head[1], head[2], head[3]
    n = split("time_s:all planned and applied (s)|target_s:target (s)|ratio:time / target|rec_per_s:reconciliations/s|rec_per_job:reconciliations per job|req_per_job:operator API requests per job|settled_s:controller settled (s)|rec_per_job_settled:  reconciliations per job by then|req_per_job_settled:  API requests per job by then|server_req_per_job:  the same, API server count|non2xx:operator responses other than 2xx|rss_mib:peak RSS (MiB)|rss_scope:  RSS of|rss_ratio:RSS / 64 MiB|heap_peak_mib:operator heap peak (MiB)|errors:failed reconciliations|failed:jobs Failed", rows, "|")
    for (r = 1; r <= n; r++) {
      split(rows[r], kl, ":")
      printf "%-44s", kl[2]
      for (c = 1; c <= 3; c++) {
        if (kl[1] == "ratio") v = sprintf("%.2f", field(s[c], "time_s") / field(s[c], "target_s"))
        else if (kl[1] == "rss_ratio") v = sprintf("%.2f", field(s[c], "rss_mib") / 64)
        else v = field(s[c], kl[1])
        if (kl[1] == "heap_peak_mib" && c == 1) v = ">=" v
        printf " %20s", v
      }
      printf "\n"
    }
  }' "$out/in-process" "$out/process" "$out/kubeconfig"
