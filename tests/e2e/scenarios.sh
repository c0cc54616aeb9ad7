# The scenarios of the e2e suite (sourced by tests/e2e/run.sh). Each `scenario_NAME` runs under
# `set -e` in a subshell, says what it proves in its comment, and fails with a message.
# shellcheck shell=bash
# shellcheck source=tests/e2e/kueue.sh
source "$ROOT/tests/e2e/kueue.sh"
# shellcheck source=tests/e2e/oom.sh
source "$ROOT/tests/e2e/oom.sh"

SCENARIOS=(crd rejections pod_security quickstart rbac multi_pod resume_after_kill config_error eviction
  suspend operator_restart leader_handover impossible_job name_conflict quota garbage_collection metrics kueue oom)

# The CRD from crds/ is what the API server stores and serves: `kubectl get finetunejobs` prints
# the promised columns (golden output, ages masked) and `kubectl explain` documents the spec.
scenario_crd() {
  diff -u "$ROOT/crds/finetunejobs.yaml" "$ROOT/charts/crds/finetunejobs.yaml" >/dev/null \
    || fail "charts/crds/finetunejobs.yaml differs from crds/finetunejobs.yaml"
  kubectl wait crd/finetunejobs.lf-operator.io --for=condition=Established --timeout=30s >/dev/null
  apply_quickstart columns quickstart-output 's/gpuMemoryGib: 8/gpuMemoryGib: 1/'
  wait_ftj columns '{.status.phase}' Failed 60
  kubectl -n "$NS" get finetunejobs columns | sed -E 's/[0-9]+(s|m|h|d)[0-9]*(s|m)?$/<age>/' >"$E2E/columns.txt"
  diff -u "$ROOT/tests/e2e/golden/get-finetunejobs.txt" "$E2E/columns.txt" || fail "kubectl get finetunejobs columns changed"
  kubectl -n "$NS" delete finetunejob columns --wait=true >/dev/null
  kubectl explain finetunejob.spec.training >"$E2E/explain.txt"
  grep -q "lora_rank" "$E2E/explain.txt" || fail "kubectl explain finetunejob.spec.training does not list lora_rank"
  kubectl explain finetunejob.spec.resources.gpusPerNode >"$E2E/explain.txt"
  grep -q "GPUs on one node" "$E2E/explain.txt" || fail "kubectl explain does not show the field documentation"
}

# The API server itself (schema, CEL rules, strict field validation) rejects what a FineTuneJob may
# not say, and its message names the field.
scenario_rejections() {
  local cases=(
    "qlora-full|s/finetuning_type: lora/finetuning_type: full/;s/^    lora_rank: 8/    quantization_bit: 4/|quantization_bit needs finetuning_type: lora"
    "rank-zero|s/lora_rank: 8/lora_rank: 0/|lora_rank"
    "gpus-per-node|s/gpusPerNode: 1/gpusPerNode: 4\n    maxGpus: 2/|gpusPerNode cannot exceed resources.maxGpus"
    "name-too-long-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa||at most 40 characters"
    "unknown-field|s/^  suspend: .*//;s/^  training:/  colour: blue\n  training:/|unknown field \"spec.colour\""
  )
  local c name edit want file
  for c in "${cases[@]}"; do
    IFS='|' read -r name edit want <<<"$c"
    file=$E2E/reject-$name.yaml
    sed -e "s/^  name: quickstart$/  name: $name/" "$ROOT/examples/quickstart.yaml" >"$file"
    [ -z "$edit" ] || sed -i -e "$edit" "$file"
    if kubectl -n "$NS" apply -f "$file" >"$E2E/reject.out" 2>&1; then
      kubectl -n "$NS" delete -f "$file" --wait=false >/dev/null 2>&1 || true
      fail "$name was accepted"
    fi
    grep -qF -- "$want" "$E2E/reject.out" || { cat "$E2E/reject.out" >&2; fail "$name: the rejection does not say '$want'"; }
    log "$name: $(head -c 300 "$E2E/reject.out" | tr '\n' ' ')"
  done
}

# Both namespaces enforce the restricted Pod Security Standard: the chart's Deployment runs there
# (it was installed so), the rendered trainer pod template is admitted, and a pod without the
# restricted security context is not (proof that enforcement is on).
scenario_pod_security() {
  [ "$(kubectl -n "$OP_NS" get deploy lf-operator -o jsonpath='{.status.readyReplicas}')" -ge 1 ] \
    || fail "the chart's Deployment has no ready replica in the restricted namespace"
  "$BIN/lf-operator" render -f "$ROOT/examples/quickstart.yaml" >"$E2E/rendered.yaml"
  python3 - "$E2E/rendered.yaml" "$NS" >"$E2E/trainer-pod.json" <<'PY'
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
job = next(d for d in docs if d["kind"] == "Job")
tpl = job["spec"]["template"]
print(json.dumps({"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": "psa-check", "namespace": sys.argv[2]},
                  "spec": dict(tpl["spec"], serviceAccountName="default")}))
PY
  kubectl create --dry-run=server -f "$E2E/trainer-pod.json" >/dev/null 2>"$E2E/psa.out" \
    || { cat "$E2E/psa.out" >&2; fail "the rendered trainer pod is not admitted under restricted"; }
  if kubectl -n "$NS" run psa-plain --image=x --dry-run=server >/dev/null 2>"$E2E/psa.out"; then
    fail "a pod without the restricted security context was admitted: Pod Security Admission is not enforcing"
  fi
  grep -q 'violates PodSecurity "restricted' "$E2E/psa.out" || { cat "$E2E/psa.out" >&2; fail "unexpected rejection"; }
}

# The bundled quick start, unchanged but for its namespace, runs through the real scheduler, Job
# controller and lf-node to Succeeded; the Step and Loss columns move while it trains, checkpoints
# are listed on the status, and the status was written by the trainer with its own token (the
# API server's audit log names the trainer's ServiceAccount as the user of those patches).
scenario_quickstart() {
  quickstart_volumes
  kubectl -n "$NS" apply -f "$ROOT/examples/quickstart.yaml" >/dev/null
  local seen=() start=$SECONDS row phase=""
  while [ $((SECONDS - start)) -lt "$TIMEOUT" ]; do
    row=$(kubectl -n "$NS" get finetunejob quickstart --no-headers -o custom-columns='P:.status.phase,S:.status.progress.stepDisplay,L:.status.progress.loss')
    phase=${row%% *}
    case " ${seen[*]} " in *" $row "*) ;; *) seen+=("$row"); log "$row" ;; esac
    [ "$phase" = Succeeded ] || [ "$phase" = Failed ] && break
    sleep 1
  done
  [ "$phase" = Succeeded ] || { dump_pods quickstart; fail "quick start ended $phase"; }
  local moving
  moving=$(printf '%s\n' "${seen[@]}" | awk '$1 == "Running" && $2 != "<none>" && $3 != "<none>"' | wc -l)
  [ "$moving" -ge 2 ] || fail "Step/Loss columns were seen moving only $moving times while Running"
  [ -n "$(ftj quickstart '{.status.checkpoints[0].step}')" ] || fail "no checkpoint on the status"
  log "checkpoints: $(ftj quickstart '{.status.checkpoints[*].step}')"
  local writes
  writes=$(status_writes_by "system:serviceaccount:$NS:quickstart-trainer" quickstart)
  [ "$writes" -gt 0 ] || fail "no status write by the trainer's ServiceAccount in the audit log"
  log "status patches by system:serviceaccount:$NS:quickstart-trainer: $writes"
  [ -f "$E2E/volumes/$NS-quickstart-output/adapter_model.safetensors" ] \
    || fail "no adapter_model.safetensors on the output volume"
}

# Per-job RBAC: the trainer's token (the per-job ServiceAccount's) can patch its own FineTuneJob's
# status and nothing else: 403 for another FineTuneJob, for pods, for secrets.
scenario_rbac() {
  kubectl -n "$NS" get serviceaccount quickstart-trainer >/dev/null || fail "no per-job ServiceAccount (run quickstart first)"
  apply_quickstart other quickstart-output 's/gpuMemoryGib: 8/gpuMemoryGib: 1/'
  local token as
  token=$(kubectl -n "$NS" create token quickstart-trainer --duration=10m)
  as=(--token="$token" --client-certificate= --client-key= --kubeconfig=/dev/null --server="$LF_CLUSTER_SERVER" \
    --certificate-authority="$LF_CLUSTER_DIR/pki/ca.crt")
  kubectl "${as[@]}" -n "$NS" patch finetunejob quickstart --subresource=status --type=merge \
    -p '{"status":{"progress":{"epoch":1.0}}}' >/dev/null || fail "the trainer cannot patch its own status"
  expect_forbidden() { # description kubectl-args...
    local what=$1; shift
    if kubectl "${as[@]}" "$@" >"$E2E/rbac.out" 2>&1; then fail "the trainer could $what"; fi
    grep -q "Forbidden\|forbidden" "$E2E/rbac.out" || { cat "$E2E/rbac.out" >&2; fail "$what: not a 403"; }
  }
  expect_forbidden "patch another FineTuneJob's status" -n "$NS" patch finetunejob other --subresource=status \
    --type=merge -p '{"status":{"progress":{"epoch":1.0}}}'
  expect_forbidden "list pods" -n "$NS" get pods
  expect_forbidden "read secrets" -n "$NS" get secrets
  expect_forbidden "edit its own spec" -n "$NS" patch finetunejob quickstart --type=merge -p '{"spec":{"suspend":true}}'
  # The operator's status fields are refused by the chart's ValidatingAdmissionPolicy: a trainer
  # cannot raise its plan's pod count, reset its attempt or restart budget, or declare success.
  local field patch
  for patch in 'plan|{"status":{"plan":{"nodes":64}}}' 'attempt|{"status":{"attempt":1000}}' \
    'restarts|{"status":{"restarts":[{"attempt":1,"reason":"Preempted","counted":false,"at":"2026-01-01T00:00:00Z"}]}}' \
    'phase|{"status":{"phase":"Failed"}}'; do
    field=${patch%%|*}
    expect_forbidden "rewrite status.$field" -n "$NS" patch finetunejob quickstart --subresource=status --type=merge -p "${patch#*|}"
    grep -q "status.$field is the operator's" "$E2E/rbac.out" || { cat "$E2E/rbac.out" >&2; fail "the refusal does not name status.$field"; }
  done
  kubectl -n "$NS" delete finetunejob other --wait=false >/dev/null
}

# A multi-pod layout: `gpus: 4` with `gpusPerNode: 2` is an Indexed Job of 2 pods × 2 worker
# processes (Gloo on CPU); rank 0's address is its pod's name under the headless Service, and the
# gang trains to Succeeded.
scenario_multi_pod() {
  quickstart_volumes
  make_volume multi-output >/dev/null
  apply_quickstart multi multi-output 's/gpusPerNode: 1/gpusPerNode: 2\n    gpus: 4/' 's/max_steps: 150/max_steps: 30/' \
    's/save_steps: 50/save_steps: 15/' 's/eval_steps: 50/eval_steps: 15/'
  wait_ftj multi '{.status.plan.gpus}' 4 60
  wait_for 60 "Job multi-1" kubectl -n "$NS" get job multi-1
  [ "$(kubectl -n "$NS" get job multi-1 -o jsonpath='{.spec.completions} {.spec.completionMode}')" = "2 Indexed" ] \
    || fail "not an Indexed Job of 2 pods"
  wait_ftj multi '{.status.phase}' Succeeded
  local addr
  addr=$(kubectl -n "$NS" get job multi-1 -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="MASTER_ADDR")].value}')
  log "MASTER_ADDR=$addr; pods: $(kubectl -n "$NS" get pods -l lf-operator.io/job-name=multi -o jsonpath='{range .items[*]}{.metadata.name}@{.status.podIP} {end}')"
  [ -f "$E2E/volumes/$NS-multi-output/adapter_model.safetensors" ] || fail "no adapter written"
}

# The trainer killed with SIGKILL after its first checkpoint: the operator's next attempt resumes
# from that checkpoint and ends Succeeded; status.restarts records it.
scenario_resume_after_kill() {
  quickstart_volumes
  make_volume resume-output >/dev/null
  apply_quickstart resume resume-output 's/max_steps: 150/max_steps: 60/' 's/save_steps: 50/save_steps: 20/'
  wait_for "$TIMEOUT" "a checkpoint of resume" ftj_nonempty resume '{.status.checkpoints[0].step}'
  local pod pid
  pod=$(running_pod resume); pid=$(trainer_pid "$pod")
  [ -n "$pid" ] || fail "no trainer process for $pod"
  log "killing $pod (pid $pid) after checkpoint $(ftj resume '{.status.checkpoints[0].step}')"
  kill -KILL "$pid"
  wait_ftj resume '{.status.phase}' Succeeded
  [ "$(ftj resume '{.status.attempt}')" = 2 ] || fail "attempt is $(ftj resume '{.status.attempt}'), not 2"
  local from
  from=$(ftj resume '{.status.restarts[0].resumedFromStep}')
  [ -n "$from" ] && [ "$from" -gt 0 ] || fail "restart did not resume from a checkpoint: $(ftj resume '{.status.restarts}')"
  # A plain SIGKILL (exit 137, reason Error) is a runtime failure: same plan, counted restart.
  [ "$(ftj resume '{.status.restarts[0].reason}')" = Runtime ] || fail "the kill was classified $(ftj resume '{.status.restarts[0].reason}')"
  [ "$(ftj resume '{.status.conditions[?(@.type=="Planned")].reason}')" = Planned ] || fail "the job was re-planned"
  log "restarts: $(ftj resume '{.status.restarts}')"
}
ftj_nonempty() { [ -n "$(ftj "$1" "$2")" ]; }

# Exit code 2 (a configuration error: the dataset is missing) fails the Job through its
# podFailurePolicy at once; no retry.
scenario_config_error() {
  quickstart_volumes
  make_volume bad-output >/dev/null
  apply_quickstart bad bad-output 's/dataset: opposites$/dataset: no_such_dataset/'
  wait_ftj bad '{.status.phase}' Failed
  # The operator reads the pod's exit code; the Job controller's verdict may come a moment later.
  wait_for 60 "Job bad-1 Failed" job_failed bad-1
  local reason
  reason=$(kubectl -n "$NS" get job bad-1 -o jsonpath='{.status.conditions[?(@.type=="Failed")].reason}')
  [ "$reason" = PodFailurePolicy ] || fail "Job failed with reason '$reason', not PodFailurePolicy"
  [ "$(ftj bad '{.status.attempt}')" = 1 ] || fail "a config error was retried"
  [ -z "$(ftj bad '{.status.restarts}')" ] || fail "restarts recorded for a config error"
  log "failure: $(ftj bad '{.status.failure}')"
}

# An eviction through the Eviction API (the pod gets DisruptionTarget) is a free retry: the trainer
# saves on SIGTERM, the podFailurePolicy ignores the failure, and the job ends Succeeded without
# using its restart budget.
scenario_eviction() {
  quickstart_volumes
  make_volume evict-output >/dev/null
  apply_quickstart evict evict-output 's/max_steps: 150/max_steps: 60/' 's/save_steps: 50/save_steps: 20/'
  wait_for "$TIMEOUT" "evict running" has_running_pod evict
  wait_for "$TIMEOUT" "evict training" ftj_nonempty evict '{.status.progress.loss}'
  local pod
  pod=$(running_pod evict)
  kubectl create --raw "/api/v1/namespaces/$NS/pods/$pod/eviction" -f - >/dev/null <<EOF
{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"$pod","namespace":"$NS"}}
EOF
  log "evicted $pod"
  wait_ftj evict '{.status.phase}' Succeeded
  local counted
  counted=$(ftj evict '{.status.restarts[*].counted}')
  case " $counted " in *" true "*) fail "the eviction used the restart budget: $(ftj evict '{.status.restarts}')" ;; esac
  log "restarts: $(ftj evict '{.status.restarts}')"
}

# spec.suspend suspends the Job (phase Suspended, pods gone); resuming unsuspends it.
scenario_suspend() {
  quickstart_volumes
  make_volume suspend-output >/dev/null
  apply_quickstart pause suspend-output 's/gpuMemoryGib: 8/gpuMemoryGib: 8/'
  wait_for "$TIMEOUT" "pause running" has_running_pod pause
  kubectl -n "$NS" patch finetunejob pause --type merge -p '{"spec":{"suspend":true}}' >/dev/null
  wait_ftj pause '{.status.phase}' Suspended
  [ "$(kubectl -n "$NS" get job pause-1 -o jsonpath='{.spec.suspend}')" = true ] || fail "Job not suspended"
  wait_for 60 "pause pods gone" no_pods pause
  kubectl -n "$NS" patch finetunejob pause --type merge -p '{"spec":{"suspend":false}}' >/dev/null
  wait_for 60 "Job unsuspended" job_unsuspended pause-1
  wait_for 60 "Resumed event" has_event pause Resumed
  kubectl -n "$NS" delete finetunejob pause --wait=false >/dev/null
}
job_failed() { [ "$(kubectl -n "$NS" get job "$1" -o jsonpath='{.status.conditions[?(@.type=="Failed")].status}')" = True ]; }
no_pods() { [ -z "$(kubectl -n "$NS" get pods -l "lf-operator.io/job-name=$1" -o name)" ]; }
job_unsuspended() { [ "$(kubectl -n "$NS" get job "$1" -o jsonpath='{.spec.suspend}')" = false ]; }

# Restarting the operator (its pod deleted; the Deployment makes a new one) duplicates nothing and
# keeps the attempt.
scenario_operator_restart() {
  quickstart_volumes
  make_volume steady-output >/dev/null
  apply_quickstart steady steady-output 's/max_steps: 150/max_steps: 1000000/'
  wait_for "$TIMEOUT" "steady Job" kubectl -n "$NS" get job steady-1
  local before
  before=$(children steady | sort | tr '\n' ' ')
  kubectl -n "$OP_NS" delete pod -l app.kubernetes.io/name=lf-operator --wait=true >/dev/null
  kubectl -n "$OP_NS" rollout status deploy/lf-operator --timeout=120s >/dev/null
  sleep 5
  [ "$(children steady | sort | tr '\n' ' ')" = "$before" ] || fail "children changed: $before -> $(children steady | tr '\n' ' ')"
  [ "$(ftj steady '{.status.attempt}')" = 1 ] || fail "attempt changed after the restart"
  kubectl -n "$NS" delete finetunejob steady --wait=false >/dev/null
}

# Two replicas: one holds the Lease; the leader's pod force-deleted (its process SIGKILLed at
# once, no release; as when its node dies) hands over within the lease duration (15 s) and nothing
# is duplicated. (A leader whose process merely crashes is restarted in the same pod, under the same
# identity, and keeps leading.)
scenario_leader_handover() {
  helm upgrade lf-operator "$ROOT/charts" -n "$OP_NS" --reuse-values --set replicaCount=2 --wait --timeout 120s >/dev/null
  local holder start newholder
  holder=$(kubectl -n "$OP_NS" get lease lf-operator -o jsonpath='{.spec.holderIdentity}')
  [ -n "$holder" ] || fail "no leader"
  log "leader: $holder"
  quickstart_volumes
  make_volume handover-output >/dev/null
  start=$SECONDS
  kubectl -n "$OP_NS" delete pod "$holder" --grace-period=0 --force >/dev/null 2>&1
  wait_for 60 "a new leader" new_leader "$holder"
  newholder=$(kubectl -n "$OP_NS" get lease lf-operator -o jsonpath='{.spec.holderIdentity}')
  log "new leader $newholder after $((SECONDS - start)) s"
  [ $((SECONDS - start)) -le 20 ] || fail "handover took $((SECONDS - start)) s (lease duration 15 s)"
  apply_quickstart handover handover-output 's/max_steps: 150/max_steps: 1000000/'
  wait_for 60 "handover Job" kubectl -n "$NS" get job handover-1
  sleep 5
  [ "$(kubectl -n "$NS" get jobs -l lf-operator.io/job-name=handover -o name | wc -l)" = 1 ] || fail "duplicate Jobs"
  kubectl -n "$NS" delete finetunejob handover --wait=false >/dev/null
  helm upgrade lf-operator "$ROOT/charts" -n "$OP_NS" --reuse-values --set replicaCount=1 --wait --timeout 120s >/dev/null
}
new_leader() { local h; h=$(kubectl -n "$OP_NS" get lease lf-operator -o jsonpath='{.spec.holderIdentity}'); [ -n "$h" ] && [ "$h" != "$1" ]; }

# An impossible job ends Failed with Planned=False/DoesNotFit, an Event, and no children.
scenario_impossible_job() {
  apply_quickstart too-big quickstart-output 's/gpuMemoryGib: 8/gpuMemoryGib: 1/'
  wait_ftj too-big '{.status.phase}' Failed 60
  [ "$(ftj too-big '{.status.conditions[?(@.type=="Planned")].status}')" = False ] || fail "Planned is not False"
  [ "$(ftj too-big '{.status.conditions[?(@.type=="Planned")].reason}')" = DoesNotFit ] || fail "Planned reason is not DoesNotFit"
  wait_for 30 "DoesNotFit event" has_event too-big DoesNotFit
  [ -z "$(children too-big)" ] || fail "too-big has children: $(children too-big)"
  log "message: $(ftj too-big '{.status.conditions[?(@.type=="Planned")].message}' | head -c 200)"
}

# What the API refuses is on the status, not retried silently: a ResourceQuota forbidding Jobs
# fails the operator's create with 403, shown as CreateForbidden with the quota's words (and
# retried with backoff); once Jobs are allowed but pods are not, the Job has no pods, and the Job
# controller's FailedCreate reason is shown instead of "0 of 1 pods running".
scenario_quota() {
  local ns=$NS-quota file=$E2E/quota.yaml
  kubectl create namespace "$ns" >/dev/null
  kubectl -n "$ns" create quota no-jobs --hard=count/jobs.batch=0 >/dev/null
  wait_for 30 "quota no-jobs counted" sh -c "kubectl -n $ns get quota no-jobs -o jsonpath='{.status.used}' | grep -q jobs"
  sed -e "s/^  name: quickstart$/  name: quota/" "$ROOT/examples/quickstart.yaml" >"$file"
  kubectl -n "$ns" apply -f "$file" >/dev/null
  reason_message() { kubectl -n "$ns" get finetunejob quota -o jsonpath="{.status.conditions[?(@.reason==\"$1\")].message}"; }
  wait_for 60 "CreateForbidden" sh -c "kubectl -n $ns get finetunejob quota -o jsonpath='{.status.conditions[*].reason}' | grep -qw CreateForbidden"
  reason_message CreateForbidden | grep -q "exceeded quota: no-jobs" || fail "CreateForbidden does not quote the quota: $(reason_message CreateForbidden)"
  log "CreateForbidden: $(reason_message CreateForbidden | head -c 200)"
  kubectl -n "$ns" create quota no-pods --hard=pods=0 >/dev/null
  wait_for 30 "quota no-pods counted" sh -c "kubectl -n $ns get quota no-pods -o jsonpath='{.status.used}' | grep -q pods"
  kubectl -n "$ns" delete quota no-jobs >/dev/null
  wait_for 180 "FailedCreate" sh -c "kubectl -n $ns get finetunejob quota -o jsonpath='{.status.conditions[*].reason}' | grep -qw FailedCreate"
  reason_message FailedCreate | grep -q "exceeded quota: no-pods" || fail "FailedCreate does not quote the quota: $(reason_message FailedCreate)"
  log "FailedCreate: $(reason_message FailedCreate | head -c 200)"
  kubectl delete namespace "$ns" --wait=false >/dev/null
}

# The operator never takes over an object it did not create (the controller-ref rule): with a
# ServiceAccount X-trainer, a ConfigMap X-config and a Service X made beforehand by someone else
# (even labelled like its children), the FineTuneJob X fails with NameConflict naming one of them;
# they are unchanged, and they survive the FineTuneJob's deletion.
scenario_name_conflict() {
  kubectl -n "$NS" create serviceaccount clash-trainer >/dev/null
  kubectl -n "$NS" create configmap clash-config --from-literal=owner=someone-else >/dev/null
  kubectl -n "$NS" create service clusterip clash --tcp=80:8080 >/dev/null
  kubectl -n "$NS" label serviceaccount/clash-trainer configmap/clash-config service/clash \
    lf-operator.io/job-name=clash >/dev/null
  local objs="serviceaccount/clash-trainer configmap/clash-config service/clash" before after msg
  # shellcheck disable=SC2086
  before=$(kubectl -n "$NS" get $objs -o jsonpath='{range .items[*]}{.metadata.resourceVersion} {end}')
  apply_quickstart clash quickstart-output
  wait_ftj clash '{.status.phase}' Failed 60
  msg=$(ftj clash '{.status.conditions[?(@.reason=="NameConflict")].message}')
  case "$msg" in
    *"ServiceAccount clash-trainer already exists"* | *"ConfigMap clash-config already exists"* | *"Service clash already exists"*) ;;
    *) fail "no NameConflict condition naming a pre-existing object: '$msg' ($(ftj clash '{.status.conditions}'))" ;;
  esac
  log "NameConflict: ${msg:0:200}"
  kubectl -n "$NS" delete finetunejob clash --wait=true >/dev/null
  # Give the garbage collector time to act on anything the job did own.
  wait_for 30 "clash's own children collected" sh -c "! kubectl -n $NS get roles,rolebindings,jobs -l lf-operator.io/job-name=clash -o name | grep -q ."
  # shellcheck disable=SC2086
  after=$(kubectl -n "$NS" get $objs -o jsonpath='{range .items[*]}{.metadata.resourceVersion} {end}') \
    || fail "a pre-existing object is gone after the FineTuneJob's deletion"
  [ "$before" = "$after" ] || fail "pre-existing objects changed: resourceVersions $before -> $after"
  [ "$(kubectl -n "$NS" get configmap clash-config -o jsonpath='{.data.owner}')" = someone-else ] \
    || fail "the pre-existing ConfigMap's data changed"
  # shellcheck disable=SC2086
  kubectl -n "$NS" delete $objs >/dev/null
}

# Deleting a FineTuneJob garbage-collects every child through ownerReferences (the real garbage
# collector; the operator deletes nothing itself).
scenario_garbage_collection() {
  quickstart_volumes
  make_volume gc-output >/dev/null
  apply_quickstart gc gc-output 's/max_steps: 150/max_steps: 1000000/'
  wait_for "$TIMEOUT" "gc running" has_running_pod gc
  [ "$(children gc | wc -l)" -ge 5 ] || fail "gc has only $(children gc | wc -l) children"
  kubectl -n "$NS" delete finetunejob gc --wait=true >/dev/null
  wait_for 60 "gc's children collected" no_children gc
  wait_for 60 "gc's pods gone" no_pods gc
}
no_children() { [ -z "$(children "$1")" ]; }

# /metrics answers on the operator pod's own address (its network namespace on the bridge).
scenario_metrics() {
  local ip
  ip=$(kubectl -n "$OP_NS" get pods -l app.kubernetes.io/name=lf-operator -o jsonpath='{.items[0].status.podIP}')
  curl -sf --max-time 5 "http://$ip:8080/metrics" >"$E2E/metrics.txt" || fail "no answer from http://$ip:8080/metrics"
  grep -q '^lf_' "$E2E/metrics.txt" || fail "no lf_ metrics"
  log "$(grep -c '^lf_' "$E2E/metrics.txt") lf_ samples"
}
