#!/usr/bin/env bash
# The body of every megaproc SLURM job: launch/{train,pptrain,pretrain}.sbatch exec this.
#
#   (inside a batch job)  launch/slurm_job.sh CONFIG [a.b=value ...]
#
# What it does, once per (re)start of the job:
#  1. resume: the trainer gets `checkpoint.resume=auto` (before the user's overrides), so a
#     requeued job continues from the newest complete checkpoint in run.out_dir;
#  2. launch, chosen by MEGAPROC_LAUNCHER:
#     srun       (default) one SLURM task per GPU runs megaproc/train.py; the trainer maps
#                SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID to RANK / WORLD_SIZE / LOCAL_RANK;
#     deepspeed  one SLURM task per node runs the deepspeed launcher for that node
#                (launch/deepspeed_node.sh --no_ssh --node_rank $SLURM_NODEID) with
#                GPUS_PER_NODE processes (default: the job's tasks per node);
#  3. preemption: the job is submitted with --signal=B:USR1@180, i.e. SIGUSR1 goes to this
#     shell only, 180 s before the time limit.  The shell forwards it to the job step (srun
#     relays a signal it receives to every process of its step, on every node); every rank
#     finishes its step, they save one checkpoint together and exit 75;
#  4. requeue: on exit code 75 the job calls `scontrol requeue $SLURM_JOB_ID`.  The job keeps
#     its id and its log (--open-mode=append), and SLURM holds it ~2 minutes (BeginTime)
#     before it is eligible to start again.
#
# Trainer processes start with SIGUSR1/SIGTERM ignored (launch/preemptible.sh): a signal that
# comes before the trainer has installed its handler cannot kill it (it is lost instead), and
# one that comes after the trainer restored the handlers at the end of training cannot turn a
# finished exit 75 into a death by signal.
#
# Environment: MEGAPROC_LAUNCHER (srun | deepspeed), GPUS_PER_NODE (deepspeed), SRUN_ARGS
# (extra srun options, e.g. "--gpu-bind=none"), SRUN_WAIT (seconds the other tasks get once
# one has ended, default 120), MASTER_PORT (default: a free port on the first node), PYTHON
# (default python), OMP_NUM_THREADS (default: the job's CPUs per task).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=launch/lib.sh
source "$here/lib.sh"

if [ -z "${SLURM_JOB_ID:-}" ]; then
  echo "slurm_job.sh runs inside a SLURM batch job; submit with launch/submit.sh JOB.sbatch" >&2
  exit 2
fi

# Per-node entry of the deepspeed launcher mode (run by srun, one task per node).
if [ "${1:-}" = "--deepspeed-node" ]; then
  shift
  slots=$1
  shift
  # Every node writes the same hostfile locally (no shared file system needed); its line
  # order is SLURM's node order, which is also what SLURM_NODEID counts in.
  hostfile="${TMPDIR:-/tmp}/megaproc_${SLURM_JOB_ID}_${SLURM_NODEID}.hostfile"
  scontrol show hostnames "$SLURM_JOB_NODELIST" | awk -v s="$slots" '{print $1 " slots=" s}' > "$hostfile"
  NODE_LABEL=$SLURM_NODEID exec "$here/deepspeed_node.sh" --hostfile "$hostfile" --no_ssh \
    --node_rank "$SLURM_NODEID" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" "$@"
fi

if [ "$#" -lt 1 ]; then
  echo "usage: launch/slurm_job.sh CONFIG [a.b=value ...]" >&2
  exit 2
fi
config=$1
shift
launcher=${MEGAPROC_LAUNCHER:-srun}
nodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
restart=${SLURM_RESTART_COUNT:-0}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# The batch script runs on the job's first node, which is MASTER_ADDR: ask its kernel for a
# port that is free right now (a fixed or job-id-derived port can be taken by another job
# sharing the node, or linger in TIME_WAIT from the run before a requeue).
if [ -z "${MASTER_PORT:-}" ]; then
  MASTER_PORT=$("${PYTHON:-python}" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])' 2>/dev/null) \
    || MASTER_PORT=$((20000 + (SLURM_JOB_ID * 10 + restart) % 20000))
fi
export MASTER_ADDR MASTER_PORT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
read -r -a srun_args <<< "${SRUN_ARGS:-}"
srun_wait=${SRUN_WAIT:-120}
train=(megaproc/train.py --config "$config" checkpoint.resume=auto "$@")

cd "$repo" || exit 2
log "job $SLURM_JOB_ID ($SLURM_JOB_NAME) start $restart on $SLURM_JOB_NODELIST:" \
    "$launcher launcher, $nodes node(s), master $MASTER_ADDR:$MASTER_PORT, config $config"

step=""
preempt() {
  log "received $1: asking every rank to save at the next step and exit $PREEMPTED_EXIT_CODE"
  # srun relays SIGUSR1 to all processes of its step; the trainers (and, in deepspeed mode,
  # the node scripts) handle it, the deepspeed launchers ignore it.
  [ -n "$step" ] && kill -s USR1 "$step" 2>/dev/null
}
trap 'preempt USR1' USR1
# At the time limit (and on scancel) SLURM sends SIGTERM to this shell and to every step
# process itself; the trainers treat it like SIGUSR1.  Keep waiting: if they manage to save
# and exit 75 before SIGKILL (KillWait later), the job is still requeued.
trap 'log "received TERM: the trainers got it too and save if time allows"' TERM

case $launcher in
  srun)
    # --kill-on-bad-exit=0: the first rank to exit 75 must not get the others killed while
    # they finish their own exit (srun's exit code is the largest of all tasks').  --wait:
    # once one task has ended, the others get SRUN_WAIT seconds, so the survivors of a
    # crashed rank, stuck in a collective with it, do not hold the allocation until the limit.
    srun --kill-on-bad-exit=0 --wait="$srun_wait" "${srun_args[@]}" \
      "$here/preemptible.sh" "${PYTHON:-python}" "${train[@]}" &
    ;;
  deepspeed)
    tasks_per_node=${SLURM_NTASKS_PER_NODE:-$(( ${SLURM_NTASKS:-$nodes} / nodes ))}
    slots=${GPUS_PER_NODE:-${tasks_per_node%%(*}}
    # One task per node holding all of the node's CPUs of this job.
    srun --kill-on-bad-exit=0 --wait="$srun_wait" --ntasks="$nodes" --ntasks-per-node=1 \
      --cpus-per-task="${SLURM_CPUS_ON_NODE:-1}" "${srun_args[@]}" \
      "$here/slurm_job.sh" --deepspeed-node "$slots" "${train[@]}" &
    ;;
  *)
    log "unknown MEGAPROC_LAUNCHER=$launcher (use srun or deepspeed)"
    exit 2
    ;;
esac
step=$!
wait_child "$step"
rc=$?
log "trainers exited with $rc"
remove_shm_buffers "$MASTER_ADDR" "$MASTER_PORT"  # this node's; deepspeed mode: every node's
if [ "$rc" -eq "$PREEMPTED_EXIT_CODE" ]; then
  log "preempted after a complete checkpoint: requeueing job $SLURM_JOB_ID"
  # The controller ends this run of the job right away (the log shows "CANCELLED ... DUE TO
  # JOB REQUEUE"); the requeued run starts from the top of the batch script.
  if ! scontrol requeue "$SLURM_JOB_ID"; then
    log "scontrol requeue failed (submitted with --no-requeue, or JobRequeue=0?): resubmit by hand"
  fi
fi
exit "$rc"
