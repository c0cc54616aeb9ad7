# The Kueue scenario of the e2e suite (sourced by tests/e2e/scenarios.sh).
# shellcheck shell=bash

# Kueue (its controller manager built from sigs.k8s.io/kueue, its CRDs installed): a FineTuneJob
# with scheduling.queueName stays suspended (Pending, WaitingForAdmission; its Workload without
# quota) until a ClusterQueue with nvidia.com/gpu quota admits it, then runs to Succeeded; a second
# one waits (its Job suspended, its Workload without quota) while the first holds the one GPU of
# quota, and is admitted only once the first has finished, then Succeeds too.
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
  local queued='s/^  resources:/  scheduling: {queueName: gpus}\n  resources:/' wl1 wl2 done1 got2
  apply_quickstart q1 q1-output "$queued" 's/max_steps: 150/max_steps: 60/'
  wait_for 60 "Job q1-1" kubectl -n "$NS" get job q1-1
  wait_for 60 "q1 waiting for admission" ftj_is q1 '{.status.conditions[?(@.type=="Ready")].reason}' WaitingForAdmission
  wait_for 60 "Kueue's Workload for Job q1-1" workload_of q1-1
  wl1=$(workload_of q1-1)
  sleep 3
  [ "$(kubectl -n "$NS" get job q1-1 -o jsonpath='{.spec.suspend}')" = true ] || fail "q1's Job is not suspended without quota"
  [ "$(ftj q1 '{.status.phase}')" = Pending ] || fail "q1 is $(ftj q1 '{.status.phase}') without quota"
  [ "$(wl_condition "$wl1" QuotaReserved status)" != True ] || fail "$wl1 has quota without a ClusterQueue"
  log "q1 waits: $(ftj q1 '{.status.message}'); $wl1: $(wl_condition "$wl1" QuotaReserved message)"
  # One GPU of quota: q1 is admitted and runs; q2 must wait for it.
  kubectl apply -f - >/dev/null <<EOF
apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata: {name: gpus}
spec:
  namespaceSelector: {}
  resourceGroups:
  - coveredResources: [cpu, memory, nvidia.com/gpu]
    flavors:
    - name: gpu
      resources:
      - {name: cpu, nominalQuota: 16}
      - {name: memory, nominalQuota: 64Gi}
      - {name: nvidia.com/gpu, nominalQuota: 1}
EOF
  wait_ftj q1 '{.status.phase}' Running
  [ "$(wl_condition "$wl1" Admitted status)" = True ] || fail "q1 runs but $wl1 is not admitted"
  log "q1 admitted and running"
  apply_quickstart q2 q2-output "$queued" 's/max_steps: 150/max_steps: 20/'
  wait_for 60 "Job q2-1" kubectl -n "$NS" get job q2-1
  wait_for 60 "Kueue's Workload for Job q2-1" workload_of q2-1
  wl2=$(workload_of q2-1)
  wait_for 30 "$wl2 pending for quota" wl_is "$wl2" QuotaReserved status False
  [ "$(ftj q1 '{.status.phase}')" = Running ] || fail "q1 finished before q2 was seen waiting (lengthen q1)"
  [ "$(kubectl -n "$NS" get job q2-1 -o jsonpath='{.spec.suspend}')" = true ] || fail "q2 was admitted while q1 holds the quota"
  [ "$(ftj q2 '{.status.phase}')" = Pending ] || fail "q2 is $(ftj q2 '{.status.phase}') while q1 holds the quota"
  log "q2 waits while q1 runs: $(ftj q2 '{.status.message}'); $wl2: $(wl_condition "$wl2" QuotaReserved message)"
  wait_ftj q1 '{.status.phase}' Succeeded
  wait_ftj q2 '{.status.phase}' Succeeded
  # q2 got the quota only once q1's Workload had finished (RFC 3339 UTC times compare as strings).
  done1=$(wl_condition "$wl1" Finished lastTransitionTime)
  got2=$(wl_condition "$wl2" QuotaReserved lastTransitionTime)
  [ -n "$done1" ] && [[ ! "$got2" < "$done1" ]] || fail "q2 got the quota at $got2, before q1 finished at ${done1:-?}"
  log "q1's Workload finished at $done1, q2's got the quota at $got2"
}

# The name of the Workload Kueue created for Job $1 (fails while there is none).
workload_of() {
  local name
  name=$(kubectl -n "$NS" get workloads \
    -o jsonpath="{.items[?(@.metadata.ownerReferences[0].name==\"$1\")].metadata.name}")
  [ -n "$name" ] && echo "$name"
}
wl_condition() { # WORKLOAD TYPE FIELD
  kubectl -n "$NS" get workload "$1" -o jsonpath="{.status.conditions[?(@.type==\"$2\")].$3}"
}
wl_is() { [ "$(wl_condition "$1" "$2" "$3")" = "$4" ]; }

# Kueue's controller manager as a process with the admin identity. Its webhook server listens on a
# local port, but no webhook configuration points the API server at it: the operator creates Jobs
# suspended and labelled with the queue itself, as Kueue's mutating webhook would.
# The visibility API server (feature gate VisibilityOnDemand, on by default) is off: it reads its
# certificate from a fixed /visibility and, without one, exits the whole manager (os.Exit in its
# goroutine) right after "Starting manager"; nothing here uses the visibility API.
start_kueue() {
  local dir=$LF_CLUSTER_DIR/kueue crds health
  crds=$(dirname "$LF_CLUSTER_BIN")/kueue-crds
  kubectl apply --server-side -f "$crds" >/dev/null
  kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
  mkdir -p "$dir/certs"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=kueue-webhook \
    -keyout "$dir/certs/tls.key" -out "$dir/certs/tls.crt" >/dev/null 2>&1
  kubectl create namespace kueue-system >/dev/null 2>&1 || true
  health=127.0.0.1:$(free_port)
  cat >"$dir/config.yaml" <<EOF
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
featureGates: {VisibilityOnDemand: false}
health: {healthProbeBindAddress: "$health"}
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
  local pid=$!
  echo "$pid kueue" >>"$LF_CLUSTER_DIR/pids"
  # Ready (its webhook server serves) and its Job controller running, and still alive after that.
  wait_for 60 "Kueue's manager ready" kueue_ready "$pid" "$health" \
    || { tail -n 20 "$LF_CLUSTER_DIR/logs/kueue.log" | cut -c1-400 >&2; return 1; }
  sleep 2
  kill -0 "$pid" 2>/dev/null \
    || { tail -n 20 "$LF_CLUSTER_DIR/logs/kueue.log" | cut -c1-400 >&2; fail "Kueue's manager exited"; return 1; }
}

kueue_ready() { # pid health-address
  kill -0 "$1" && curl -sf "http://$2/readyz" \
    && grep -q '"logger":"job".*"Starting workers"' "$LF_CLUSTER_DIR/logs/kueue.log"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
