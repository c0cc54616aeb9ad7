# Helpers of the e2e suite (sourced by tests/e2e/run.sh and the scenario files).
# Assumes: the cluster's env is sourced (KUBECONFIG, LF_CLUSTER_*), $NS is the tenants' namespace,
# $OP_NS the operator's, $E2E the suite's state directory, $ROOT the repository.

TIMEOUT=${LF_E2E_TIMEOUT:-240}

log() { printf '    %s\n' "$*"; }
fail() { printf '    FAILED: %s\n' "$*" >&2; return 1; }

# A FineTuneJob's field (jsonpath) in $NS.
ftj() { kubectl -n "$NS" get finetunejob "$1" -o jsonpath="$2" 2>/dev/null; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local limit=$1 what=$2 start=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $((SECONDS - start)) -ge "$limit" ]; then fail "timed out after ${limit}s waiting for $what"; return 1; fi
    sleep 0.5
  done
}

ftj_is() { [ "$(ftj "$1" "$2")" = "$3" ]; }
# wait_ftj NAME JSONPATH VALUE [SECONDS]
wait_ftj() {
  wait_for "${4:-$TIMEOUT}" "$1 $2 = $3" ftj_is "$1" "$2" "$3" || {
    kubectl -n "$NS" get finetunejob "$1" -o yaml | sed -n '/^status:/,$p' >&2
    dump_pods "$1"
    return 1
  }
}

# The pods of a FineTuneJob, with their logs' tails (on failure).
dump_pods() {
  kubectl -n "$NS" get pods -l "lf-operator.io/job-name=$1" -o wide >&2 2>/dev/null || true
  for f in "$LF_CLUSTER_DIR"/node-*/pods/"${NS}"_"$1"-*/*.log; do
    [ -f "$f" ] || continue
    echo "--- $f" >&2
    tail -n 15 "$f" >&2
  done
}

has_event() { # object-name reason
  kubectl -n "$NS" get events.events.k8s.io --field-selector "regarding.name=$1" -o jsonpath='{.items[*].reason}' \
    | tr ' ' '\n' | grep -qx "$2"
}

children() { # job-name: the operator's children of a FineTuneJob
  kubectl -n "$NS" get jobs,services,configmaps,serviceaccounts,roles,rolebindings,networkpolicies \
    -l "lf-operator.io/job-name=$1" -o name 2>/dev/null
}

# A PersistentVolume of the hostPath type under $E2E/volumes, bound to a claim in $NS, writable by
# the trainer's user (65532) as a provisioner would make it.
make_volume() { # claim-name
  local dir=$E2E/volumes/$NS-$1
  mkdir -p "$dir"
  chown -R 65532:65532 "$dir"
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: $NS-$1}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {path: $dir, type: Directory}
  claimRef: {namespace: $NS, name: $1}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $1, namespace: $NS}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ""
  volumeName: $NS-$1
  resources: {requests: {storage: 1Gi}}
EOF
  wait_for 60 "claim $1 bound" pvc_bound "$1"
  echo "$dir"
}
pvc_bound() { [ "$(kubectl -n "$NS" get pvc "$1" -o jsonpath='{.status.phase}' 2>/dev/null)" = Bound ]; }

# The quick start's model and data on a claim `quickstart`, and an empty claim `quickstart-output`.
quickstart_volumes() {
  local dir
  if ! pvc_bound quickstart; then
    dir=$(make_volume quickstart) || return 1
    cp -r "$ROOT/examples/quickstart/model" "$ROOT/examples/quickstart/data" "$dir/"
    chown -R 65532:65532 "$dir"
  fi
  pvc_bound quickstart-output || make_volume quickstart-output >/dev/null
}

# The quick start FineTuneJob under another name (and optional sed edits of the YAML), applied in $NS.
apply_quickstart() { # name output-claim [sed-expression...]
  local name=$1 out=$2 file
  shift 2
  file=$E2E/$name.yaml
  sed -e "s/^  name: quickstart$/  name: $name/" -e "s/claimName: quickstart-output/claimName: $out/" \
    "$ROOT/examples/quickstart.yaml" >"$file"
  for e in "$@"; do sed -i -e "$e" "$file"; done
  kubectl -n "$NS" apply -f "$file" >/dev/null
}

# The running trainer process of a pod (lf-node reports `lf-node://<pid>` as the container ID).
trainer_pid() { # pod
  kubectl -n "$NS" get pod "$1" -o jsonpath='{.status.containerStatuses[0].containerID}' | sed -n 's|^lf-node://||p'
}
running_pod() { # job-name: the first Running trainer pod's name
  kubectl -n "$NS" get pods -l "lf-operator.io/job-name=$1" --field-selector status.phase=Running \
    -o jsonpath='{.items[0].metadata.name}' 2>/dev/null
}
has_running_pod() { [ -n "$(running_pod "$1")" ]; }

# Successful status patches of a FineTuneJob by a user, from the API server's audit log.
status_writes_by() { # username ftj-name
  python3 - "$LF_CLUSTER_DIR/logs/audit.log" "$1" "$NS" "$2" <<'PY'
import json, sys
log, user, ns, name = sys.argv[1:]
n = 0
for line in open(log):
    e = json.loads(line)
    o = e.get("objectRef", {})
    if (e.get("user", {}).get("username") == user and e.get("verb") == "patch"
            and o.get("namespace") == ns and o.get("name") == name
            and o.get("subresource") == "status"
            and e.get("responseStatus", {}).get("code") == 200):
        n += 1
print(n)
PY
}
