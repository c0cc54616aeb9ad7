#!/usr/bin/env bash
# The end-to-end suite on a real Kubernetes control plane, built from the upstream sources
# (tests/cluster/upstream: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
# helm), with lf-node (tests/cluster/node, the kubelet stand-in) running pods as local processes in
# their own network and mount namespaces. Part of the README's test command (scripts/test.sh).
#
#   tests/e2e/run.sh [SCENARIO...]     all scenarios, or those named (see scenarios.sh)
#   LF_E2E_KEEP=1                      keep the cluster running and its directory afterwards
#   LF_E2E_BIN=DIR                     use lf-operator, lf-trainer and lf-node from DIR (no build)
#
# Steps: build the binaries (cached), start the control plane (tests/cluster/up.sh), start one node
# with 4 `nvidia.com/gpu`, install the chart with the built helm into a namespace that enforces the
# restricted Pod Security Standard (the operator runs as the chart's Deployment, i.e. with the
# chart's ServiceAccount and RBAC), then run each scenario and print one line per scenario with
# its time, and a closing `e2e: N passed, M failed`. Needs root (namespaces, mounts).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
# shellcheck source=/dev/null
source scripts/env.sh
export ROOT NS=lf-e2e OP_NS=lf-operator-system
E2E=$(mktemp -d /tmp/lf-e2e.XXXXXX)
export E2E
chmod 755 "$E2E"

finish() {
  local rc=$?
  if [ "${LF_E2E_KEEP:-0}" = 1 ]; then
    echo "kept: source $E2E/cluster/env; stop with tests/cluster/down.sh $E2E/cluster" >&2
  else
    "$ROOT/tests/cluster/down.sh" "$E2E/cluster"
    rm -rf "$E2E"
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

section() { printf '\n=== %s\n' "$*"; }

section "build"
t0=$SECONDS
if [ -n "${LF_E2E_BIN:-}" ]; then
  BIN=$(cd "$LF_E2E_BIN" && pwd) || exit 1
  echo "using the binaries in $BIN"
else
  cargo build -q --bin lf-operator --bin lf-trainer --bin lf-node --features lf-operator/fault-injection || exit 1
  BIN=$ROOT/target/debug
  echo "lf-operator, lf-trainer, lf-node built in $((SECONDS - t0)) s"
fi
export BIN

section "control plane"
LF_CLUSTER_AUDIT_NAMESPACE=$OP_NS "$ROOT/tests/cluster/up.sh" "$E2E/cluster" || exit 1
# shellcheck source=/dev/null
source "$E2E/cluster/env"
# shellcheck source=tests/e2e/lib.sh
source "$ROOT/tests/e2e/lib.sh"

# A node: lf-node (the kubelet stand-in) with this cluster's identity for it. The "image" is the
# built binaries at /usr/local/lf/bin and libtorch at /opt/libtorch, as the Dockerfile lays them out.
start_node() { # index gpus extra-args...
  local i=$1 gpus=$2
  shift 2
  setsid "$BIN/lf-node" \
    --kubeconfig "$LF_CLUSTER_DIR/nodes/lf-node-$i.kubeconfig" --name "lf-node-$i" --gpus "$gpus" \
    --pod-cidr "$LF_CLUSTER_POD_PREFIX.$((i + 1)).0/24" --bridge "$LF_CLUSTER_BRIDGE" \
    --api-host "$LF_CLUSTER_API_HOST" --api-port "$LF_CLUSTER_API_PORT" \
    --image-mount "$BIN:/usr/local/lf/bin" \
    --image-mount "$(dirname "$LIBTORCH"):/opt/libtorch" \
    --image-env "PATH=/usr/local/lf/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --image-env "LD_LIBRARY_PATH=/opt/libtorch/torch/lib" \
    --state-dir "$LF_CLUSTER_DIR/node-$i" --peer-hosts-dir "$LF_CLUSTER_DIR/peer-hosts" "$@" \
    >"$LF_CLUSTER_DIR/logs/lf-node-$i.log" 2>&1 </dev/null &
  echo "$! lf-node-$i" >>"$LF_CLUSTER_DIR/pids"
}
section "nodes: lf-node-0 (4 nvidia.com/gpu, tainted), lf-node-1 (no GPU, for the operator)"
# The GPU node is tainted as GPU pools are; the ExtendedResourceToleration admission plugin gives
# pods that request nvidia.com/gpu the toleration, so nothing else lands there.
start_node 0 4 --label nvidia.com/gpu.product=lf-node-cpu --taint nvidia.com/gpu=present:NoSchedule
start_node 1 0
for n in lf-node-0 lf-node-1; do
  wait_for 60 "node $n Ready" kubectl wait "node/$n" --for=condition=Ready --timeout=1s || exit 1
done
kubectl get nodes -o wide

section "chart (helm install, restricted namespace)"
for ns in "$OP_NS" "$NS"; do
  kubectl create namespace "$ns" >/dev/null
  kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/enforce-version=latest >/dev/null
done
t0=$SECONDS
helm install lf-operator "$ROOT/charts" -n "$OP_NS" \
  --set image.repository=lf-operator --set image.tag=e2e \
  --wait --timeout 180s || { kubectl -n "$OP_NS" get pods -o wide; tail -n 30 "$LF_CLUSTER_DIR"/logs/lf-node-1.log; exit 1; }
echo "chart installed and the operator ready in $((SECONDS - t0)) s"

# shellcheck source=tests/e2e/scenarios.sh
source "$ROOT/tests/e2e/scenarios.sh"

passed=0 failed=0 failures=()
selected=("$@")
E2E_ALL=0
[ ${#selected[@]} -gt 0 ] || { selected=("${SCENARIOS[@]}"); E2E_ALL=1; }
export E2E_ALL
for s in "${selected[@]}"; do
  section "scenario $s"
  t0=$SECONDS
  # Not as an `if` condition: bash ignores `set -e` inside a condition, subshell or not.
  ( set -e; "scenario_$s" )
  if [ $? -eq 0 ]; then
    passed=$((passed + 1))
    echo "scenario $s: passed in $((SECONDS - t0)) s"
  else
    failed=$((failed + 1))
    failures+=("$s")
    echo "scenario $s: FAILED after $((SECONDS - t0)) s"
    tail -n 20 "$LF_CLUSTER_DIR"/node-1/pods/"$OP_NS"_*/*.log 2>/dev/null
  fi
done
echo
[ ${#failures[@]} -eq 0 ] || echo "failed scenarios: ${failures[*]}"
echo "e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
