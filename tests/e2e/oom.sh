# The out-of-memory scenario of the e2e suite (sourced by tests/e2e/scenarios.sh).
# shellcheck shell=bash

# An OOM exit → re-plan. `spec.resources.memory: 216Mi` becomes the trainer container's memory
# limit, which lf-node enforces with a memory cgroup as a kubelet with runc does. With
# `per_device_train_batch_size: 256` the trainer's host memory peaks near 270 MiB in its first step
# (about 70 MiB of it before training; the rest is the micro-batch's activations, on the CPU), so
# the kernel's OOM killer kills it during training: the pod's container status says OOMKilled, exit
# code 137. The operator classifies that as OutOfMemory and re-plans with a smaller micro-batch
# (128, with 2 accumulation steps, the same global batch); that peaks near 170 MiB, fits under the
# same limit, and the job ends Succeeded on attempt 2. Finished pods leave no cgroup behind.
first_plan_note() {
  kubectl -n "$NS" get events.events.k8s.io --field-selector regarding.name=oom \
    -o jsonpath='{.items[?(@.reason=="Planned")].note}'
}

first_plan_micro_batch_256() {
  first_plan_note | grep -q "micro-batch 256 "
}

scenario_oom() {
  quickstart_volumes
  make_volume oom-output >/dev/null
  # Every update of the job's pods, from before the first one exists: the OOM-killed pod is
  # deleted with its Job when the operator re-plans.
  kubectl -n "$NS" get pods -l lf-operator.io/job-name=oom -w -o json >"$E2E/oom-pods.json" 2>/dev/null &
  local watcher=$!
  # Every layer recomputed, as these figures were measured (`auto` would keep the tiny model's
  # activations, the GPU having room, and re-plan by recomputing before shrinking the batch).
  apply_quickstart oom oom-output 's/per_device_train_batch_size: 8/per_device_train_batch_size: 256/' \
    's/max_steps: 150/max_steps: 1/' 's/^    gpusPerNode: 1$/    gpusPerNode: 1\n    memory: 216Mi/' \
    's/^    cutoff_len: 64$/    cutoff_len: 64\n    gradient_checkpointing: true/'
  wait_for 60 "Job oom-1" kubectl -n "$NS" get job oom-1
  [ "$(kubectl -n "$NS" get job oom-1 -o jsonpath='{.spec.template.spec.containers[0].resources.limits.memory}')" = 216Mi ] \
    || { kill "$watcher"; fail "spec.resources.memory is not the trainer's memory limit"; }
  # The first plan, from its event: the first attempt can be OOM-killed and re-planned within a
  # second, before the status is read.
  wait_for 30 "the first plan (micro-batch 256)" first_plan_micro_batch_256 \
    || { kill "$watcher"; fail "first plan: $(first_plan_note)"; }
  wait_ftj oom '{.status.restarts[0].reason}' OutOfMemory || { kill "$watcher"; return 1; }
  log "attempt 1: $(ftj oom '{.status.failure.message}')"
  wait_ftj oom '{.status.phase}' Succeeded || { kill "$watcher"; return 1; }
  kill "$watcher"

  # The first attempt's pod, as the API server showed it before it was deleted.
  local first
  first=$(python3 - "$E2E/oom-pods.json" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
dec, i, seen = json.JSONDecoder(), 0, set()
while i < len(text):
    if text[i].isspace():
        i += 1
        continue
    pod, i = dec.raw_decode(text, i)
    if pod["metadata"]["labels"].get("lf-operator.io/attempt") != "1":
        continue
    for cs in pod.get("status", {}).get("containerStatuses", []):
        t = (cs.get("state") or {}).get("terminated")
        if t:
            seen.add(f'{pod["metadata"]["name"]} {cs["name"]} {t.get("reason")} {t.get("exitCode")}')
print("; ".join(sorted(seen)))
PY
)
  log "attempt 1's pod terminated: $first"
  case "$first" in *" trainer OOMKilled 137"*) ;; *) fail "attempt 1's trainer was not reported OOMKilled with exit code 137" ;; esac
  # Killed while training (its model was ready), before its first step ended.
  local log1
  log1=$(sed -e 's/\x1b\[[0-9;]*m//g' "$LF_CLUSTER_DIR"/node-0/pods/"$NS"_oom-1-*/trainer.log)
  grep -q "model ready" <<<"$log1" || fail "attempt 1 was killed before its model was ready"
  if grep -qE "model-state memory step=|progress step=" <<<"$log1"; then fail "attempt 1 finished a step under the limit"; fi
  log "attempt 1's trainer log ends: $(tail -n 1 <<<"$log1" | cut -c 1-140)"

  # The operator's verdict: OutOfMemory, re-planned to a smaller micro-batch, Succeeded on attempt 2.
  [ "$(ftj oom '{.status.failure.exitCode}')" = 137 ] || fail "failure exit code $(ftj oom '{.status.failure.exitCode}')"
  [ "$(ftj oom '{.status.attempt}')" = 2 ] || fail "attempt is $(ftj oom '{.status.attempt}'), not 2"
  local planned
  planned=$(ftj oom '{.status.conditions[?(@.type=="Planned")].reason}: {.status.conditions[?(@.type=="Planned")].message}')
  log "Planned: $planned"
  case "$planned" in "Replanned: re-planned after running out of memory"*) ;; *) fail "not re-planned after the OOM kill" ;; esac
  local plan
  plan=$(ftj oom '{.status.plan.microBatchSize}x{.status.plan.gradientAccumulationSteps}')
  [ "$plan" = 128x2 ] || fail "the re-plan is micro-batch x accumulation $plan, not 128x2"
  [ "$(kubectl -n "$NS" get job oom-2 -o jsonpath='{.spec.template.spec.containers[0].resources.limits.memory}')" = 216Mi ] \
    || fail "attempt 2 does not run under the same memory limit"

  # Finished pods leave no cgroup on the node (lf-node logs its cgroup root at start).
  local root uids
  root=$(sed -e 's/\x1b\[[0-9;]*m//g' "$LF_CLUSTER_DIR/logs/lf-node-0.log" \
    | sed -n 's/.*memory cgroups.* root=\([^ ]*\).*/\1/p' | head -n 1)
  [ -n "$root" ] || fail "lf-node-0 does not enforce memory limits (no memory cgroup root in its log)"
  uids=$(python3 - "$E2E/oom-pods.json" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
dec, i, uids = json.JSONDecoder(), 0, set()
while i < len(text):
    if text[i].isspace():
        i += 1
        continue
    pod, i = dec.raw_decode(text, i)
    uids.add(pod["metadata"]["uid"])
print(" ".join(sorted(uids)))
PY
)
  no_pod_cgroups() { local u; for u in $uids; do [ ! -e "$root/$u" ] || return 1; done; }
  wait_for 30 "the pods' cgroups removed from $root" no_pod_cgroups
  log "cgroups of pods $uids: gone from $root"
}
