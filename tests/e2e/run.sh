#!/usr/bin/env bash
# End-to-end check of lf-operator on a real Kubernetes cluster (kind or k3d). NOT part of CI: our
# CI machines have no cluster; the controller's logic is tested against the in-memory API server
# (operator/tests/scenarios.rs). This script shows what only a real cluster can: the CRD's schema
# and CEL rules in the API server, the chart's RBAC being sufficient, the image starting, the Job
# controller/scheduler/garbage collector acting on what the operator creates, leader election
# across real replicas, and (with GPUs) a real training run to Succeeded.
#
# Usage: tests/e2e/run.sh            (creates a kind cluster `lf-e2e`, deletes it at the end)
#   LF_E2E_CLUSTER=kind|k3d|existing  cluster to use (existing: the current kubectl context)
#   LF_E2E_KEEP=1                     keep the cluster and the objects afterwards
#   LF_E2E_GPU=1                      the cluster has a node with nvidia.com/gpu: also run the
#                                     quick start to Succeeded and check a restart from a checkpoint
#   LF_E2E_IMAGE=repo:tag             use this image instead of building one from the Dockerfile
# Needs: docker, kubectl, helm 3/4, and kind or k3d.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CLUSTER=${LF_E2E_CLUSTER:-kind}
NAME=lf-e2e
OP_NS=lf-operator-system
NS=lf-e2e
IMAGE=${LF_E2E_IMAGE:-lf-operator:e2e}
TIMEOUT=${LF_E2E_TIMEOUT:-180s}

log() { printf '\n=== %s\n' "$*"; }
die() { printf 'E2E FAILED: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 is not installed"; }
for t in kubectl helm docker; do need "$t"; done

cleanup() {
  if [ "${LF_E2E_KEEP:-0}" = 1 ]; then return; fi
  case "$CLUSTER" in
    kind) kind delete cluster --name "$NAME" >/dev/null 2>&1 || true ;;
    k3d) k3d cluster delete "$NAME" >/dev/null 2>&1 || true ;;
    existing) kubectl delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
              helm uninstall lf-operator -n "$OP_NS" >/dev/null 2>&1 || true ;;
  esac
}
trap cleanup EXIT

# Waits until a FineTuneJob's jsonpath equals a value.
wait_ftj() { # name jsonpath value
  kubectl -n "$NS" wait "finetunejob/$1" --for=jsonpath="$2"="$3" --timeout="$TIMEOUT" \
    || { kubectl -n "$NS" get finetunejob "$1" -o yaml; die "$1: $2 never became $3"; }
}
has_event() { # object-name reason
  kubectl -n "$NS" get events.events.k8s.io --field-selector "regarding.name=$1" -o jsonpath='{.items[*].reason}' | tr ' ' '\n' | grep -qx "$2" \
    || die "no $2 event for $1"
}

log "cluster ($CLUSTER)"
case "$CLUSTER" in
  kind) need kind; kind get clusters | grep -qx "$NAME" || kind create cluster --name "$NAME" --wait 120s ;;
  k3d) need k3d; k3d cluster list "$NAME" >/dev/null 2>&1 || k3d cluster create "$NAME" --no-lb --k3s-arg "--disable=traefik@server:0" --wait ;;
  existing) kubectl cluster-info >/dev/null ;;
  *) die "LF_E2E_CLUSTER must be kind, k3d or existing" ;;
esac

if [ -z "${LF_E2E_IMAGE:-}" ]; then
  log "image $IMAGE from the Dockerfile"
  docker build -t "$IMAGE" "$ROOT"
fi
case "$CLUSTER" in
  kind) kind load docker-image "$IMAGE" --name "$NAME" ;;
  k3d) k3d image import "$IMAGE" -c "$NAME" ;;
esac

log "generated CRD is what the chart ships"
(cd "$ROOT" && cargo run -q -p lf-operator -- crdgen) | diff -q - "$ROOT/charts/crds/finetunejobs.yaml" >/dev/null \
  || die "charts/crds/finetunejobs.yaml is stale: run lf-operator crdgen --write"

log "install the chart"
helm upgrade --install lf-operator "$ROOT/charts" -n "$OP_NS" --create-namespace \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=IfNotPresent \
  --set replicaCount=2 --wait --timeout 180s
kubectl -n "$OP_NS" rollout status deploy -l app.kubernetes.io/name=lf-operator --timeout=180s
holder=$(kubectl -n "$OP_NS" get lease -o jsonpath='{.items[0].spec.holderIdentity}')
[ -n "$holder" ] || die "no replica holds the leader Lease"
echo "leader: $holder"

kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -

log "the API server rejects what the schema and CEL rules forbid"
if sed -e "s/namespace: .*//" "$ROOT/examples/llama3-8b-qlora.yaml" | sed -e 's/finetuning_type: lora/finetuning_type: full/' \
     | kubectl -n "$NS" apply -f - 2>/tmp/lf-e2e-cel.txt; then
  die "QLoRA with finetuning_type: full was accepted"
fi
grep -q "quantization_bit" /tmp/lf-e2e-cel.txt || die "the rejection does not name quantization_bit: $(cat /tmp/lf-e2e-cel.txt)"

log "an impossible job fails with the planner's reason and creates nothing"
sed -e 's/name: llama3-8b-lora-24gb/name: too-big/' -e 's/gpuMemoryGib: 24/gpuMemoryGib: 4/' "$ROOT/examples/llama3-8b-lora-24gb.yaml" \
  | kubectl -n "$NS" apply -f -
wait_ftj too-big '{.status.phase}' Failed
[ "$(kubectl -n "$NS" get finetunejob too-big -o jsonpath='{.status.conditions[?(@.type=="Planned")].reason}')" = DoesNotFit ] \
  || die "too-big: Planned reason is not DoesNotFit"
[ -z "$(kubectl -n "$NS" get jobs,configmaps,services -l lf-operator.io/job-name=too-big -o name)" ] || die "too-big created children"
has_event too-big DoesNotFit

log "a feasible job is planned, its children created; without GPUs its pod says why it waits"
kubectl -n "$NS" apply -f "$ROOT/examples/llama3-8b-lora-24gb.yaml"
J=llama3-8b-lora-24gb
kubectl -n "$NS" wait "job/$J-1" --for=create --timeout="$TIMEOUT" 2>/dev/null \
  || kubectl -n "$NS" get "job/$J-1" >/dev/null || die "Job $J-1 was not created"
kubectl -n "$NS" get finetunejob "$J" -o jsonpath='{.status.plan.gpus}' | grep -q '^[0-9]' || die "no plan on the status"
has_event "$J" Planned
kubectl -n "$NS" get finetunejob "$J"   # printer columns
if [ "${LF_E2E_GPU:-0}" != 1 ]; then
  kubectl -n "$NS" wait finetunejob "$J" --for=jsonpath='{.status.conditions[?(@.type=="Ready")].reason}'=Unschedulable --timeout="$TIMEOUT" \
    || die "$J: Ready condition does not say Unschedulable"
fi

log "suspend and resume"
kubectl -n "$NS" patch finetunejob "$J" --type merge -p '{"spec":{"suspend":true}}'
wait_ftj "$J" '{.status.phase}' Suspended
[ "$(kubectl -n "$NS" get job "$J-1" -o jsonpath='{.spec.suspend}')" = true ] || die "Job not suspended"
kubectl -n "$NS" patch finetunejob "$J" --type merge -p '{"spec":{"suspend":false}}'
kubectl -n "$NS" wait "job/$J-1" --for=jsonpath='{.spec.suspend}'=false --timeout="$TIMEOUT" || die "Job not resumed"
has_event "$J" Resumed

log "restarting the operator duplicates nothing"
kubectl -n "$OP_NS" rollout restart deploy -l app.kubernetes.io/name=lf-operator
kubectl -n "$OP_NS" rollout status deploy -l app.kubernetes.io/name=lf-operator --timeout=180s
sleep 10
[ "$(kubectl -n "$NS" get jobs -l lf-operator.io/job-name=$J -o name | wc -l)" -eq 1 ] || die "duplicate Jobs after restart"
[ "$(kubectl -n "$NS" get finetunejob "$J" -o jsonpath='{.status.attempt}')" = 1 ] || die "attempt changed after restart"

if [ "${LF_E2E_GPU:-0}" = 1 ]; then
  log "GPU: the quick start runs to Succeeded, and a killed rank resumes from its checkpoint"
  kubectl -n "$NS" apply -f - <<'EOF'
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: quickstart}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: quickstart-output}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: quickstart-loader}
spec:
  containers: [{name: c, image: busybox:1.36, command: [sleep, "3600"], volumeMounts: [{name: q, mountPath: /q}]}]
  volumes: [{name: q, persistentVolumeClaim: {claimName: quickstart}}]
EOF
  kubectl -n "$NS" wait pod/quickstart-loader --for=condition=Ready --timeout="$TIMEOUT"
  kubectl -n "$NS" cp "$ROOT/examples/quickstart/." "quickstart-loader:/q/"
  kubectl -n "$NS" delete pod quickstart-loader --wait
  kubectl -n "$NS" apply -f "$ROOT/examples/quickstart.yaml"
  wait_ftj quickstart '{.status.phase}' Running
  kubectl -n "$NS" wait finetunejob quickstart --for=jsonpath='{.status.checkpoints[0].step}'=50 --timeout=600s
  pod=$(kubectl -n "$NS" get pods -l lf-operator.io/job-name=quickstart -o jsonpath='{.items[0].metadata.name}')
  kubectl -n "$NS" exec "$pod" -- sh -c 'kill 1' || true
  wait_ftj quickstart '{.status.attempt}' 2
  [ "$(kubectl -n "$NS" get finetunejob quickstart -o jsonpath='{.status.restarts[0].resumedFromStep}')" -ge 50 ] || die "no resume step"
  wait_ftj quickstart '{.status.phase}' Succeeded
  has_event quickstart Succeeded
fi

log "deleting a FineTuneJob garbage-collects its children"
kubectl -n "$NS" delete finetunejob "$J" --wait
for i in $(seq 1 30); do
  [ -z "$(kubectl -n "$NS" get jobs,configmaps,services,serviceaccounts,roles,rolebindings -l lf-operator.io/job-name=$J -o name)" ] && break
  sleep 2
done
[ -z "$(kubectl -n "$NS" get jobs,configmaps,services,serviceaccounts,roles,rolebindings -l lf-operator.io/job-name=$J -o name)" ] \
  || die "children of $J survived its deletion"

log "metrics"
kubectl -n "$OP_NS" port-forward deploy/lf-operator 18080:8080 >/dev/null 2>&1 &
PF=$!
sleep 3
metrics=$(curl -sf localhost:18080/metrics || true)
kill "$PF" 2>/dev/null || true
grep -q "lf_operator_jobs{phase=" <<<"$metrics" || die "/metrics lacks lf_operator_jobs"

log "E2E PASSED"
