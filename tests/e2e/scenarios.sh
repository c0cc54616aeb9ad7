# The scenarios of the e2e suite (sourced by tests/e2e/run.sh). Each `scenario_NAME` runs under
# `set -e` in a subshell, says what it proves in its comment, and fails with a message.
# shellcheck shell=bash
# shellcheck source=tests/e2e/kueue.sh
source "$ROOT/tests/e2e/kueue.sh"
# shellcheck source=tests/e2e/oom.sh
source "$ROOT/tests/e2e/oom.sh"

SCENARIOS=(crd rejections pod_security quickstart dpo serve rbac multi_pod resume_after_kill config_error eviction
  suspend operator_restart leader_handover impossible_job name_conflict quota garbage_collection metrics kueue oom
  panic_exits namespace_scoped least_privilege)

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

# DPO after SFT, unchanged as bundled: examples/quickstart-dpo.yaml starts from the quick start's
# adapter on that job's output volume (spec.model.adapter, mounted read-only; the trainer's log says
# it loaded it) and trains on the preference pairs to Succeeded with the rewards on its status. The
# reference is the base without the adapter (LLaMA-Factory's rule), and the held-out pairs' final
# DPO loss must be below ln 2 = 0.693, its value at a zero reward margin: on pairs neither
# fine-tune saw, the trained adapter raises the preferred answers over the base more than the
# rejected ones (held-out accuracy 0% -> 100% in trainer/tests/preference_example.rs).
scenario_dpo() {
  [ -f "$E2E/volumes/$NS-quickstart-output/adapter_model.safetensors" ] || fail "no quick start adapter (run quickstart first)"
  pvc_bound quickstart-dpo-output || make_volume quickstart-dpo-output >/dev/null
  kubectl -n "$NS" apply -f "$ROOT/examples/quickstart-dpo.yaml" >/dev/null
  wait_ftj quickstart-dpo '{.status.phase}' Succeeded
  grep -qs "adapter loaded" "$LF_CLUSTER_DIR"/node-*/pods/"${NS}"_quickstart-dpo-*/*.log \
    || { dump_pods quickstart-dpo; fail "the trainer did not load the quick start's adapter"; }
  local rewards eval_loss out=$E2E/volumes/$NS-quickstart-dpo-output
  rewards=$(ftj quickstart-dpo '{.status.progress.preference}')
  [ -n "$rewards" ] || fail "no preference metrics on the status"
  log "status.progress.preference: $rewards"
  eval_loss=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["eval_loss"])' "$out/all_results.json") \
    || fail "no eval_loss in $out/all_results.json"
  log "held-out DPO loss: $eval_loss (ln 2 = 0.693 at a zero reward margin)"
  python3 -c 'import math,sys; sys.exit(0 if float(sys.argv[1]) < math.log(2) else 1)' "$eval_loss" \
    || fail "DPO did not move the held-out pairs toward the preferred answers: eval_loss $eval_loss"
}

# spec.serve: once the job Succeeds, the operator runs `lf-trainer serve` on its adapter (a
# Deployment and a Service, restricted pod security, readiness on /health, the planner's KV-cache
# size); lf-node runs the replica and the test talks to it over the OpenAI API, where the job's
# name is the model. Choosing a checkpoint rolls the Deployment to it; removing spec.serve removes
# the server.
scenario_serve() {
  # Whatever happens, the job goes (its server with it, through the garbage collector): a replica
  # left running would hold one of lf-node-0's GPUs for the scenarios after this one.
  trap 'kubectl -n "$NS" delete finetunejob served --ignore-not-found --wait=false >/dev/null 2>&1' EXIT
  quickstart_volumes
  pvc_bound served-output || make_volume served-output >/dev/null
  apply_quickstart served served-output 's/max_steps: 150/max_steps: 20/' 's/save_steps: 50/save_steps: 10/' \
    's/eval_steps: 50/eval_steps: 10/' 's/^spec:$/spec:\n  serve: {maxConcurrency: 2, maxModelLen: 128}/'
  wait_ftj served '{.status.phase}' Succeeded
  wait_ftj served '{.status.conditions[?(@.type=="Serving")].status}' True
  log "Serving: $(ftj served '{.status.conditions[?(@.type=="Serving")].message}')"
  log "status.serving: $(ftj served '{.status.serving}')"
  [ "$(ftj served '{.status.serving.readyReplicas}')" = 1 ] || fail "status.serving.readyReplicas is not 1"
  [ "$(ftj served '{.status.serving.url}')" = "http://served-serve.$NS.svc:8000" ] || fail "status.serving.url"
  kubectl -n "$NS" get service served-serve >/dev/null || fail "no Service served-serve"
  local ip models answer
  ip=$(kubectl -n "$NS" get pods -l "lf-operator.io/job-name=served,app.kubernetes.io/component=serve" \
    --field-selector status.phase=Running -o jsonpath='{.items[0].status.podIP}')
  [ -n "$ip" ] || fail "no running server pod"
  curl -sf --max-time 5 "http://$ip:8000/health" | grep -q '"model_loaded":true' || fail "/health does not say the model is loaded"
  models=$(curl -sf --max-time 5 "http://$ip:8000/v1/models") || fail "no answer from /v1/models"
  log "/v1/models: $models"
  echo "$models" | grep -q '"id":"served"' || fail "the job's adapter is not served under its name"
  answer=$(curl -sf --max-time 60 "http://$ip:8000/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model":"served","messages":[{"role":"user","content":"what is the opposite of hot?"}],"max_tokens":8,"temperature":0}') \
    || fail "chat completion failed"
  log "chat completion: $answer"
  echo "$answer" | grep -q '"finish_reason"' || fail "no completion in the answer"
  # Another result rolls the Deployment: the checkpoint of step 10.
  kubectl -n "$NS" patch finetunejob served --type=merge -p '{"spec":{"serve":{"checkpointStep":10}}}' >/dev/null
  wait_ftj served '{.status.serving.served}' checkpoint-10
  wait_for "$TIMEOUT" "the Deployment rolled to checkpoint-10" sh -c \
    "kubectl -n $NS get deployment served-serve -o jsonpath='{.spec.template.metadata.annotations.lf-operator\\.io/served-revision}' | grep -q checkpoint-10"
  wait_ftj served '{.status.conditions[?(@.type=="Serving")].status}' True
  log "after the rollout: $(ftj served '{.status.conditions[?(@.type=="Serving")].message}')"
  # A checkpoint the job does not have is refused on the condition, and the job stays Succeeded.
  kubectl -n "$NS" patch finetunejob served --type=merge -p '{"spec":{"serve":{"checkpointStep":7}}}' >/dev/null
  wait_ftj served '{.status.conditions[?(@.type=="Serving")].reason}' CheckpointNotFound
  [ "$(ftj served '{.status.phase}')" = Succeeded ] || fail "a serving refusal changed the job's phase"
  # Removing spec.serve removes the server.
  kubectl -n "$NS" patch finetunejob served --type=json -p '[{"op":"remove","path":"/spec/serve"}]' >/dev/null
  wait_for 60 "the server removed" sh -c "! kubectl -n $NS get deployment served-serve >/dev/null 2>&1 && ! kubectl -n $NS get service served-serve >/dev/null 2>&1 && ! kubectl -n $NS get configmap served-serve >/dev/null 2>&1"
  [ -z "$(ftj served '{.status.serving}')" ] || fail "status.serving stays after spec.serve was removed"
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
  # Status writes as the trainer sends them: a PATCH of /status, no read before (its Role grants
  # `patch` only; `kubectl patch` would GET first).
  status_patch() { # job json: prints the HTTP code, the body in $E2E/rbac.out
    curl -sS -o "$E2E/rbac.out" -w '%{http_code}' --cacert "$LF_CLUSTER_DIR/pki/ca.crt" \
      -H "Authorization: Bearer $token" -H 'Content-Type: application/merge-patch+json' -X PATCH \
      --data "$2" "$LF_CLUSTER_SERVER/apis/lf-operator.io/v1alpha1/namespaces/$NS/finetunejobs/$1/status"
  }
  [ "$(status_patch quickstart '{"status":{"progress":{"epoch":1.0}}}')" = 200 ] \
    || { cat "$E2E/rbac.out" >&2; fail "the trainer cannot patch its own status"; }
  expect_forbidden() { # description kubectl-args...
    local what=$1; shift
    if kubectl "${as[@]}" "$@" >"$E2E/rbac.out" 2>&1; then fail "the trainer could $what"; fi
    grep -q "Forbidden\|forbidden" "$E2E/rbac.out" || { cat "$E2E/rbac.out" >&2; fail "$what: not a 403"; }
  }
  [ "$(status_patch other '{"status":{"progress":{"epoch":1.0}}}')" = 403 ] \
    || { cat "$E2E/rbac.out" >&2; fail "the trainer could patch another FineTuneJob's status"; }
  expect_forbidden "read its own status" -n "$NS" get finetunejob quickstart --subresource=status
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
    [ "$(status_patch quickstart "${patch#*|}")" = 403 ] || { cat "$E2E/rbac.out" >&2; fail "the trainer could rewrite status.$field"; }
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
# is duplicated. Identities are `<pod>_<suffix>`, new with every process.
scenario_leader_handover() {
  helm upgrade lf-operator "$ROOT/charts" -n "$OP_NS" --reuse-values --set replicaCount=2 --wait --timeout 120s >/dev/null
  local holder start newholder
  holder=$(kubectl -n "$OP_NS" get lease lf-operator -o jsonpath='{.spec.holderIdentity}')
  [ -n "$holder" ] || fail "no leader"
  log "leader: $holder"
  quickstart_volumes
  make_volume handover-output >/dev/null
  start=$SECONDS
  kubectl -n "$OP_NS" delete pod "${holder%_*}" --grace-period=0 --force >/dev/null 2>&1
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
  # An object of a child's name without the operator's label (no watch shows it): the create finds
  # it, the operator reads who controls it, and refuses it all the same.
  kubectl -n "$NS" create configmap clash2-config --from-literal=owner=someone-else >/dev/null
  apply_quickstart clash2 quickstart-output
  wait_ftj clash2 '{.status.phase}' Failed 60
  msg=$(ftj clash2 '{.status.conditions[?(@.reason=="NameConflict")].message}')
  case "$msg" in *"ConfigMap clash2-config already exists"*) ;; *) fail "clash2: no NameConflict naming the ConfigMap: '$msg'" ;; esac
  kubectl -n "$NS" delete finetunejob clash2 --wait=true >/dev/null
  [ "$(kubectl -n "$NS" get configmap clash2-config -o jsonpath='{.data.owner}')" = someone-else ] \
    || fail "the unlabelled ConfigMap changed or went away"
  kubectl -n "$NS" delete configmap clash2-config >/dev/null
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

# Least privilege, checked two ways. `kubectl auth can-i` answers a matrix of what the operator's
# and a trainer's ServiceAccounts may and may not do, as the real RBAC authorizer decides it. And
# the API server's audit log of this whole suite (every request of the operator's namespace's
# service accounts) shows which granted verbs the operator really used: each rule of its
# ClusterRole and leader-election Role must have been used, or be justified below, and no request
# of the operator's may have been refused by RBAC. Run last: it reads what the suite did.
scenario_least_privilege() {
  local op="system:serviceaccount:$OP_NS:lf-operator" trainer="system:serviceaccount:$NS:privileges-trainer"
  quickstart_volumes
  make_volume privileges-output >/dev/null
  apply_quickstart privileges privileges-output 's/^spec:$/spec:\n  suspend: true/'
  wait_for 60 "privileges' Role" kubectl -n "$NS" get role privileges-trainer
  local line user ns verb what want got wrong=0
  while read -r user ns want verb what; do
    [ -n "$user" ] || continue
    case $user in op) user=$op ;; trainer) user=$trainer ;; esac
    # shellcheck disable=SC2086
    if kubectl auth can-i "$verb" $what --as="$user" -n "$ns" >/dev/null 2>&1; then got=yes; else got=no; fi
    if [ "$got" != "$want" ]; then
      echo "can-i: ${user##*:} $verb $what -n $ns: $got, expected $want" >&2
      wrong=$((wrong + 1))
    fi
  done <<EOF
op $NS yes watch finetunejobs.lf-operator.io
op $NS yes get finetunejobs.lf-operator.io
op $NS yes patch finetunejobs.lf-operator.io --subresource=status
op $NS no get finetunejobs.lf-operator.io --subresource=status
op $NS no patch finetunejobs.lf-operator.io
op $NS no update finetunejobs.lf-operator.io --subresource=status
op $NS no delete finetunejobs.lf-operator.io
op $NS yes create jobs.batch
op $NS yes delete jobs.batch
op $NS no update jobs.batch
op $NS yes list pods
op $NS no get pods
op $NS no create pods
op $NS no delete pods
op $NS no create pods --subresource=exec
op $NS no get secrets
op $NS no list secrets
op $NS yes create serviceaccounts
op $NS no delete serviceaccounts
op $NS no create serviceaccounts --subresource=token
op $NS yes create roles.rbac.authorization.k8s.io
op $NS no delete roles.rbac.authorization.k8s.io
op $NS no escalate roles.rbac.authorization.k8s.io
op $NS no bind roles.rbac.authorization.k8s.io
op $NS yes create networkpolicies.networking.k8s.io
op $NS no delete networkpolicies.networking.k8s.io
op $NS yes create deployments.apps
op $NS yes delete deployments.apps
op $NS no update deployments.apps
op $NS no create replicasets.apps
op $NS yes create events.events.k8s.io
op $NS no create leases.coordination.k8s.io
op $OP_NS yes create leases.coordination.k8s.io
op $OP_NS yes update leases.coordination.k8s.io/lf-operator
op $OP_NS no update leases.coordination.k8s.io/someone-else
op $OP_NS no get secrets
op default no list nodes
op default no create clusterroles.rbac.authorization.k8s.io
op default no impersonate users
trainer $NS no get finetunejobs.lf-operator.io/privileges --subresource=status
trainer $NS yes patch finetunejobs.lf-operator.io/privileges --subresource=status
trainer $NS no patch finetunejobs.lf-operator.io/quickstart --subresource=status
trainer $NS no patch finetunejobs.lf-operator.io/privileges
trainer $NS no delete finetunejobs.lf-operator.io/privileges
trainer $NS no list finetunejobs.lf-operator.io
trainer $NS no list pods
trainer $NS no create pods
trainer $NS no get secrets
trainer $NS no create events.events.k8s.io
EOF
  [ "$wrong" -eq 0 ] || fail "$wrong answers of the can-i matrix differ"
  log "can-i matrix: every answer as expected"
  # An operator setting that changes what it renders reaches existing jobs' children (the
  # NetworkPolicy is re-applied: its patch grant is used).
  helm upgrade lf-operator "$ROOT/charts" -n "$OP_NS" --reuse-values \
    --set-json 'trainerMetricsFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]' \
    --wait --timeout 120s >/dev/null
  wait_for 60 "privileges' NetworkPolicy admits the monitoring namespace" sh -c \
    "kubectl -n $NS get networkpolicy privileges-trainer -o json | grep -q '\"kubernetes.io/metadata.name\": \"monitoring\"'"
  helm upgrade lf-operator "$ROOT/charts" -n "$OP_NS" --reuse-values --set-json 'trainerMetricsFrom=[]' \
    --wait --timeout 120s >/dev/null
  kubectl -n "$NS" delete finetunejob privileges --wait=false >/dev/null
  if [ "${E2E_ALL:-0}" != 1 ]; then
    log "audit-log minimality skipped: it needs the whole suite's requests (run without arguments)"
    return 0
  fi
  kubectl get clusterrole lf-operator -o json >"$E2E/clusterrole.json"
  kubectl -n "$OP_NS" get role lf-operator-leader-election -o json >"$E2E/leader-role.json"
  python3 "$ROOT/tests/e2e/rbac_usage.py" "$LF_CLUSTER_DIR/logs/audit.log" "$op" \
    "$E2E/clusterrole.json" "$E2E/leader-role.json" || fail "the operator's RBAC is not minimal (above)"
}

# A bug that panics inside a reconciliation (injected: LF_FAULT_PANIC_ON, compiled in by the
# suite's `fault-injection` build) ends the process — it does not linger as a leader that renews
# its Lease while reconciling nothing — and leadership passes to a live process, which carries on
# once the poisonous job is gone. Two replicas, as in production.
scenario_panic_exits() {
  trap panic_cleanup EXIT
  helm upgrade lf-operator "$ROOT/charts" -n "$OP_NS" --reuse-values --set replicaCount=2 \
    --set-json "operator.extraEnv=[{\"name\":\"LF_FAULT_PANIC_ON\",\"value\":\"$NS/boom\"}]" \
    --wait --timeout 120s >/dev/null
  local holder pod before start
  wait_for 60 "a leader" sh -c "kubectl -n $OP_NS get lease lf-operator -o jsonpath='{.spec.holderIdentity}' | grep -q ."
  holder=$(kubectl -n "$OP_NS" get lease lf-operator -o jsonpath='{.spec.holderIdentity}')
  pod=${holder%_*}
  before=$(kubectl -n "$OP_NS" get pod "$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}')
  log "leader: $holder (restarts so far: $before)"
  start=$SECONDS
  apply_quickstart boom quickstart-output 's/gpuMemoryGib: 8/gpuMemoryGib: 1/'
  wait_for 60 "the leader's process exits" restarted "$pod" "$before"
  log "the leader's process exited after $((SECONDS - start)) s"
  # (kube-runtime runs each reconciliation as a task and re-raises its panic in the controller's.)
  grep -rh "^error: the controller panicked" "$LF_CLUSTER_DIR"/node-*/pods/"$OP_NS"_* 2>/dev/null \
    | grep -qF "injected fault: reconciling $NS/boom" \
    || fail "no 'error: the controller panicked (... injected fault ...)' in the operator's logs"
  wait_for 60 "a new leader" new_leader "$holder"
  log "new leader: $(kubectl -n "$OP_NS" get lease lf-operator -o jsonpath='{.spec.holderIdentity}') after $((SECONDS - start)) s"
  kubectl -n "$NS" delete finetunejob boom --wait=true >/dev/null
  # Whoever leads now reconciles: an impossible job ends Failed at once.
  apply_quickstart after-boom quickstart-output 's/gpuMemoryGib: 8/gpuMemoryGib: 1/'
  wait_ftj after-boom '{.status.phase}' Failed
  kubectl -n "$NS" delete finetunejob after-boom --wait=false >/dev/null
}
panic_cleanup() { # whatever happened: no poisonous job, no injected fault, one replica
  kubectl -n "$NS" delete finetunejob boom --ignore-not-found --wait=false >/dev/null 2>&1
  helm upgrade lf-operator "$ROOT/charts" -n "$OP_NS" --reuse-values --set replicaCount=1 \
    --set-json 'operator.extraEnv=[]' --wait --timeout 120s >/dev/null
}
restarted() { # pod restart-count-before
  local n
  n=$(kubectl -n "$OP_NS" get pod "$1" -o jsonpath='{.status.containerStatuses[0].restartCount}' 2>/dev/null)
  [ -n "$n" ] && [ "$n" -gt "$2" ]
}

# A namespace-scoped install (chart value watchNamespaces): no ClusterRole, a Role in each listed
# namespace, and the operator reconciles FineTuneJobs there and nowhere else. The operator is
# stopped before its permissions change in either direction, so no request of it is refused.
scenario_namespace_scoped() {
  trap scoped_cleanup EXIT
  local scoped=$NS-scoped op="system:serviceaccount:$OP_NS:lf-operator" file=$E2E/scoped.yaml
  kubectl create namespace "$scoped" >/dev/null
  kubectl label namespace "$scoped" pod-security.kubernetes.io/enforce=restricted >/dev/null
  operator_scaled 0
  helm upgrade lf-operator "$ROOT/charts" -n "$OP_NS" --reuse-values --set replicaCount=1 \
    --set-json "watchNamespaces=[\"$scoped\"]" --wait --timeout 120s >/dev/null
  kubectl get clusterrole lf-operator >/dev/null 2>&1 && fail "the ClusterRole is still there"
  kubectl auth can-i list finetunejobs.lf-operator.io -A --as="$op" >/dev/null 2>&1 && fail "the operator may still list FineTuneJobs cluster-wide"
  kubectl auth can-i create jobs.batch -n "$NS" --as="$op" >/dev/null 2>&1 && fail "the operator may still create Jobs in $NS"
  kubectl auth can-i create jobs.batch -n "$scoped" --as="$op" >/dev/null 2>&1 || fail "the operator may not create Jobs in $scoped"
  # A suspended job in the watched namespace gets its children (created through the Role) ...
  sed -e "s/^  name: quickstart$/  name: scoped/" -e 's/^spec:$/spec:\n  suspend: true/' "$ROOT/examples/quickstart.yaml" >"$file"
  kubectl -n "$scoped" apply -f "$file" >/dev/null
  wait_for 60 "Job $scoped/scoped-1" kubectl -n "$scoped" get job scoped-1
  wait_for 60 "scoped Suspended" sh -c "[ \"\$(kubectl -n $scoped get finetunejob scoped -o jsonpath='{.status.phase}')\" = Suspended ]"
  # ... one elsewhere is not looked at.
  apply_quickstart ignored quickstart-output 's/gpuMemoryGib: 8/gpuMemoryGib: 1/'
  sleep 10
  [ -z "$(ftj ignored '{.status.phase}')" ] || fail "a FineTuneJob outside the watched namespaces was reconciled: $(ftj ignored '{.status.phase}')"
  log "reconciled in $scoped, not in $NS"
  kubectl -n "$scoped" delete finetunejob scoped --wait=true >/dev/null
  # Back to cluster-wide: the ignored job is planned (and fails: it cannot fit).
  operator_scaled 0
  helm upgrade lf-operator "$ROOT/charts" -n "$OP_NS" --reuse-values --set replicaCount=1 \
    --set-json 'watchNamespaces=[]' --wait --timeout 120s >/dev/null
  wait_ftj ignored '{.status.phase}' Failed
  kubectl -n "$NS" delete finetunejob ignored --wait=false >/dev/null
}
scoped_cleanup() { # whatever happened: back to the cluster-wide install, the namespace gone
  if helm get values lf-operator -n "$OP_NS" -o json | grep -q '"watchNamespaces":\["'; then
    operator_scaled 0
    helm upgrade lf-operator "$ROOT/charts" -n "$OP_NS" --reuse-values --set replicaCount=1 \
      --set-json 'watchNamespaces=[]' --wait --timeout 120s >/dev/null
  fi
  kubectl -n "$NS" delete finetunejob ignored --ignore-not-found --wait=false >/dev/null 2>&1
  kubectl delete namespace "$NS-scoped" --ignore-not-found --wait=false >/dev/null 2>&1
}
operator_scaled() { # replicas: scale the operator and wait until exactly that many pods exist
  helm upgrade lf-operator "$ROOT/charts" -n "$OP_NS" --reuse-values --set replicaCount="$1" --wait --timeout 120s >/dev/null
  wait_for 90 "$1 operator pods" sh -c "[ \$(kubectl -n $OP_NS get pods -l app.kubernetes.io/name=lf-operator -o name | wc -l) = $1 ]"
}
