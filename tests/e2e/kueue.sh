# The Kueue scenario of the e2e suite (sourced by tests/e2e/scenarios.sh).
# shellcheck shell=bash

# Kueue (its controller manager built from sigs.k8s.io/kueue, its CRDs installed): a FineTuneJob
# with scheduling.queueName stays suspended (Pending, WaitingForAdmission) until a ClusterQueue with
# nvidia.com/gpu quota admits it, then runs; a second one waits for the quota while the first runs
# and is admitted when it finishes.
scenario_kueue() {
  start_kueue
  kubectl apply -f - >/dev/null <<EOF
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {name: gpu}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: LocalQueue
metadata: {name: gpus, namespace: $NS}
spec: {clusterQueue: gpus}
EOF
  quickstart_volumes
  make_volume q1-output >/dev/null
  make_volume q2-output >/dev/null
  local queued='s/^  resources:/  scheduling: {queueName: gpus}\n  resources:/'
  apply_quickstart q1 q1-output "$queued" 's/max_steps: 150/max_steps: 40/'
  wait_for 60 "Job q1-1" kubectl -n "$NS" get job q1-1
  wait_for 60 "q1 waiting for admission" ftj_is q1 '{.status.conditions[?(@.type=="Ready")].reason}' WaitingForAdmission
  sleep 3
  [ "$(kubectl -n "$NS" get job q1-1 -o jsonpath='{.spec.suspend}')" = true ] || fail "q1's Job is not suspended without quota"
  [ "$(ftj q1 '{.status.phase}')" = Pending ] || fail "q1 is $(ftj q1 '{.status.phase}') without quota"
  log "q1 waits: $(ftj q1 '{.status.message}')"
  # One GPU of quota: q1 is admitted and runs; q2 must wait for it.
  kubectl apply -f - >/dev/null <<EOF
apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata: {name: gpus}
spec:
  namespaceSelector: {}
  resourceGroups:
  - coveredResources: [nvidia.com/gpu]
    flavors:
    - name: gpu
      resources: [{name: nvidia.com/gpu, nominalQuota: 1}]
EOF
  wait_ftj q1 '{.status.phase}' Running
  log "q1 admitted and running"
  apply_quickstart q2 q2-output "$queued" 's/max_steps: 150/max_steps: 20/'
  wait_for 60 "Job q2-1" kubectl -n "$NS" get job q2-1
  sleep 3
  if [ "$(ftj q1 '{.status.phase}')" = Running ]; then
    [ "$(kubectl -n "$NS" get job q2-1 -o jsonpath='{.spec.suspend}')" = true ] || fail "q2 was admitted while q1 holds the quota"
    log "q2 waits while q1 runs: $(ftj q2 '{.status.message}')"
  fi
  wait_ftj q1 '{.status.phase}' Succeeded
  wait_ftj q2 '{.status.phase}' Succeeded
  log "workloads: $(kubectl -n "$NS" get workloads -o jsonpath='{range .items[*]}{.metadata.name}: admitted={.status.conditions[?(@.type=="Admitted")].status} {end}')"
}

# Kueue's controller manager as a process with the admin identity. Its webhooks are not registered:
# the operator creates Jobs suspended and labelled with the queue itself, as Kueue's webhook would.
start_kueue() {
  local dir=$LF_CLUSTER_DIR/kueue crds
  crds=$(dirname "$LF_CLUSTER_BIN")/kueue-crds
  kubectl apply --server-side -f "$crds" >/dev/null
  kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
  mkdir -p "$dir/certs"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=kueue-webhook \
    -keyout "$dir/certs/tls.key" -out "$dir/certs/tls.crt" >/dev/null 2>&1
  kubectl create namespace kueue-system >/dev/null 2>&1 || true
  cat >"$dir/config.yaml" <<EOF
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
health: {healthProbeBindAddress: "127.0.0.1:$(free_port)"}
metrics: {bindAddress: "127.0.0.1:$(free_port)"}
webhook: {port: $(free_port), host: 127.0.0.1, certDir: "$dir/certs"}
leaderElection: {leaderElect: false}
internalCertManagement: {enable: false}
integrations: {frameworks: ["batch/job"]}
EOF
  # Without its internal certificate management Kueue reads the metrics server's certificate from
  # a fixed path: a private mount namespace gives it ours there.
  local fixed=/etc/kueue/metrics/certs
  if [ ! -d "$fixed" ]; then
    mkdir -p "$fixed"
    printf '%s\n' "$fixed" /etc/kueue/metrics /etc/kueue >>"$LF_CLUSTER_DIR/created-dirs"
  fi
  setsid unshare --mount --propagation private sh -c 'mount --bind "$1" "$2" && shift 2 && exec "$@"' \
    sh "$dir/certs" "$fixed" "$LF_CLUSTER_BIN/kueue" --config "$dir/config.yaml" \
    >"$LF_CLUSTER_DIR/logs/kueue.log" 2>&1 </dev/null &
  echo "$! kueue" >>"$LF_CLUSTER_DIR/pids"
  wait_for 60 "Kueue's manager" grep -q "Starting manager" "$LF_CLUSTER_DIR/logs/kueue.log" \
    || { tail -n 20 "$LF_CLUSTER_DIR/logs/kueue.log" >&2; return 1; }
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
