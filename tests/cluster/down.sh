#!/usr/bin/env bash
# Stops what tests/cluster/up.sh DIR started (and every process recorded in DIR/pids by the tests:
# nodes, operators), removes the pods' network namespaces left behind and the bridge. Idempotent.
#   tests/cluster/down.sh DIR
set -uo pipefail
dir=${1:?usage: $0 DIR}
[ -d "$dir" ] || exit 0
pids=()
if [ -f "$dir/pids" ]; then
  # Newest first: nodes and operators stop (and clean their pods) before the API server goes.
  while read -r pid _; do pids=("$pid" "${pids[@]}"); done <"$dir/pids"
fi
for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null; done
# Nodes give their pods up to 30 s to stop; wait a little longer before killing.
for _ in $(seq 1 400); do
  alive=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && break
  sleep 0.1
done
for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null; done
: >"$dir/pids" 2>/dev/null || true
# Pods' network namespaces whose node did not clean up: lf-node names a pod's namespace lfp-<id>
# and its host-side veth lfv<id>, attached to this cluster's bridge (other clusters' are left alone).
if [ -f "$dir/bridge" ]; then
  for veth in $(ip -o link show master "$(cat "$dir/bridge")" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ns=lfp-${veth#lfv}
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
    rm -rf "/etc/netns/$ns" "/run/lf-node/$ns"
  done
  ip link del "$(cat "$dir/bridge")" 2>/dev/null
  rm -f "$dir/bridge"
fi
# Mount points the nodes created on the host and had to keep at their exit because another node's
# pods still used them (each node records them in its state dir); empty ones only, deepest first.
for record in "$dir"/node-*/mountpoints.created; do
  [ -f "$record" ] || continue
  tac "$record" | while read -r p; do
    if [ -d "$p" ]; then rmdir "$p" 2>/dev/null; elif [ -f "$p" ] && [ ! -s "$p" ]; then rm -f "$p"; fi
  done
  rm -f "$record"
done
rmdir /run/lf-node 2>/dev/null
# Memory cgroups of nodes that were killed before their own clean-up (each records its root):
# what still runs in them is killed, then the directories go, deepest first.
for record in "$dir"/node-*/cgroup-root; do
  [ -f "$record" ] || continue
  root=$(cat "$record")
  case "$root" in /sys/fs/cgroup/*/lf-node/* | /sys/fs/cgroup/lf-node/*) ;; *) continue ;; esac
  if [ -d "$root" ]; then
    find "$root" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null
    for _ in 1 2 3 4 5; do
      find "$root" -depth -type d -exec rmdir {} + 2>/dev/null
      [ -d "$root" ] || break
      sleep 0.2
    done
  fi
  rmdir "$(dirname "$root")" 2>/dev/null
  rm -f "$record"
done
# Mounts a killed node left under DIR (pods' tmpfs emptyDirs such as /dev/shm, bind mounts),
# deepest first and lazily, so that DIR can be removed.
real=$(realpath "$dir")
awk -v d="$real/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
  umount -l "$m" 2>/dev/null
done
# Empty directories the tests created outside DIR (e.g. a fixed mount point), deepest first.
if [ -f "$dir/created-dirs" ]; then
  while read -r d; do rmdir "$d" 2>/dev/null; done <"$dir/created-dirs"
  rm -f "$dir/created-dirs"
fi
exit 0
