#!/usr/bin/env bash
# Multi-node training without a cluster: LOCAL_NODES "nodes" (default 2) of
# LOCAL_PROCS_PER_NODE processes (default 1) on this machine, talking over loopback, so the
# multi-node code paths (node ranks, cross-node rendezvous, a hostfile) run anywhere.
#
#   launch/local_multinode.sh --config configs/quickstart.yaml run.out_dir=runs/mn [a.b=value ...]
#
# Every argument goes to megaproc/train.py.  Each node is one deepspeed launcher started with
# `--hostfile H --no_ssh --node_rank i --master_addr 127.0.0.1 --master_port P`, exactly as
# on separate machines (launch/deepspeed_node.sh, which also reads .deepspeed_env).  The
# script waits for all nodes and exits with the worst code: the first failure's, else 75 when
# the nodes were preempted, else 0; once a node has failed, the others are killed after
# FAIL_GRACE seconds (default 60).  SIGUSR1/SIGTERM are forwarded to every node: all ranks
# save at the next step and the script exits 75, like a preempted SLURM job.
#
# Environment: LOCAL_NODES, LOCAL_PROCS_PER_NODE, MASTER_PORT (default: a free port),
# LOCAL_HOSTFILE (use this hostfile instead of generating one; see launch/hostfile.example),
# PYTHON (default python).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=launch/lib.sh
source "$here/lib.sh"

if [ "$#" -eq 0 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

nodes=${LOCAL_NODES:-2}
per_node=${LOCAL_PROCS_PER_NODE:-1}
port=${MASTER_PORT:-$("${PYTHON:-python}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/megaproc_local_multinode.XXXXXX")
cleanup() { rm -rf "$tmp"; }
trap cleanup EXIT
if [ -n "${LOCAL_HOSTFILE:-}" ]; then
  hostfile=$LOCAL_HOSTFILE
else
  # Distinct names for the same loopback address: deepspeed keys nodes by hostname, and with
  # --no_ssh it never connects to them (the rendezvous goes to --master_addr).
  hostfile=$tmp/hostfile
  for ((i = 0; i < nodes; i++)); do
    case $i in
      0) host=127.0.0.1 ;;
      1) host=localhost ;;
      *) host=127.0.0.$((i + 1)) ;;
    esac
    echo "$host slots=$per_node" >> "$hostfile"
  done
fi

pids=()
forward_all() {
  local pid
  log "local_multinode: $1 -> ${#pids[@]} nodes"
  for pid in "${pids[@]}"; do kill -s "$1" "$pid" 2>/dev/null; done
}
trap 'forward_all USR1' USR1
trap 'forward_all TERM' TERM

cd "$repo" || exit 2
log "local_multinode: $nodes nodes x $per_node processes, master 127.0.0.1:$port"
for ((i = 0; i < nodes; i++)); do
  NODE_LABEL=$i "$here/deepspeed_node.sh" --hostfile "$hostfile" --no_ssh --node_rank "$i" \
    --master_addr 127.0.0.1 --master_port "$port" megaproc/train.py "$@" &
  pids+=($!)
done
wait_all "${pids[@]}"
rc=$?
log "local_multinode: exit $rc"
exit "$rc"
