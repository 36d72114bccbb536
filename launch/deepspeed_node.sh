#!/usr/bin/env bash
# One node's deepspeed launcher, made safe for preemption: SIGUSR1/SIGTERM sent to this script
# (or to every process of the node, as SLURM does) make each training process finish its step,
# save one checkpoint together with the others and exit 75; the script exits with the
# launcher's code (75), so the caller can requeue.
#
#   launch/deepspeed_node.sh [deepspeed launcher options] SCRIPT [script arguments]
#   launch/deepspeed_node.sh --hostfile H --no_ssh --node_rank 1 --master_addr A \
#       --master_port P megaproc/train.py --config configs/pretrain.yaml
#
# Why a wrapper: the deepspeed launcher (runner.py -> launch.py -> workers) does not survive
# a preemption signal on its own.  SIGUSR1 has no handler there, so it kills the launcher
# outright; SIGTERM makes launch.py terminate the workers (SIGKILL after 30 s) and exit 1.
# Either way no checkpoint and no exit 75.  Here the launcher starts with both signals
# *ignored* (inherited through exec); the workers install the trainer's own handlers at train
# start, so only they react, and this script forwards the signals it receives to them.
# When the first worker exits 75, launch.py sends SIGTERM to the others, which by then have
# restored the inherited SIG_IGN (the preemption hook restores the previous handler at train
# end) and so finish their own exit; launch.py then exits with that first code, 75.
#
# ~/.deepspeed_env and ./.deepspeed_env are exported here (see load_deepspeed_env in lib.sh):
# deepspeed itself ignores them under --no_ssh.  PYTHON picks the interpreter (default python).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/lib.sh
source "$here/lib.sh"

if [ "$#" -eq 0 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

load_deepspeed_env

launcher=""
forward() {
  # Forward signal $1 to the training processes (the launchers ignore it).
  local workers=()
  [ -n "$launcher" ] || return 0
  mapfile -t workers < <(deepspeed_workers "$launcher")
  if [ "${#workers[@]}" -gt 0 ]; then
    log "node ${NODE_LABEL:-}: $1 -> training processes ${workers[*]}"
    kill -s "$1" "${workers[@]}" 2>/dev/null
  else
    log "node ${NODE_LABEL:-}: $1 before any training process started (ignored)"
  fi
}
# Traps first, so a signal arriving during start-up is not fatal to this script.
trap 'forward USR1' USR1
trap 'forward TERM' TERM

# The rendezvous address and port (deepspeed's defaults otherwise), to clean up after the run.
master_addr=127.0.0.1
master_port=29500
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    --master_addr=*) master_addr=${args[i]#*=} ;;
    --master_addr) master_addr=${args[i + 1]:-} ;;
    --master_port=*) master_port=${args[i]#*=} ;;
    --master_port) master_port=${args[i + 1]:-} ;;
  esac
done

( trap '' USR1 TERM; exec "${PYTHON:-python}" -m deepspeed.launcher.runner "$@" ) &
launcher=$!
wait_child "$launcher"
rc=$?
remove_shm_buffers "$master_addr" "$master_port"
exit "$rc"
