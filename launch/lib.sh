# Shell helpers shared by the launch scripts (sourced, never run on its own).
#
# The launch layer exists to turn SLURM's preemption signal into "every rank saves at the next
# step boundary, exits 75, the job is requeued".  Two shell facts carry all of it:
#  - a signal *ignored* (trap '' SIG) before exec stays ignored in the exec'd program, while a
#    *handled* one is reset to the default action; Python keeps an inherited SIG_IGN until it
#    installs its own handler (the trainer's preemption hook does at train start);
#  - `wait` returns early (status > 128) when a trapped signal arrives, so a script that has to
#    react to signals runs its child in the background and waits in a loop (wait_child).

PREEMPTED_EXIT_CODE=75

log() {
  # One timestamped line on stderr (SLURM writes stdout and stderr to the same job log).
  echo "[launch $(date '+%H:%M:%S')] $*" >&2
}

children() {
  # Direct children of PID $1.
  pgrep -P "$1" 2>/dev/null || true
}

descendants() {
  # Every process below PID $1 (children first, then theirs).
  local child
  for child in $(children "$1"); do
    echo "$child"
    descendants "$child"
  done
}

deepspeed_workers() {
  # Training processes of the deepspeed launcher started as PID $1: the direct children of
  # the per-node `python -m deepspeed.launcher.launch` process(es) below it.  Only those get
  # forwarded signals: a worker's own subprocesses (compilers, ...) would die from SIGUSR1.
  local pid
  for pid in "$1" $(descendants "$1"); do
    if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q 'deepspeed\.launcher\.launch '; then
      children "$pid"
    fi
  done
}

wait_child() {
  # Wait until background child $1 has ended, even when trapped signals interrupt `wait`,
  # and return its exit status.
  local pid=$1 rc again
  while :; do
    wait "$pid"
    rc=$?
    # A real exit status is <= 128 unless the child died from a signal; `wait` interrupted
    # by a trap also returns 128 + signal number, while the child is still alive.
    if [ "$rc" -le 128 ]; then
      return "$rc"
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      # Gone.  If the trap interrupted the wait just before the child ended, one more wait
      # collects the real status; if the wait above already did, bash answers 127.
      wait "$pid" 2>/dev/null
      again=$?
      [ "$again" -ne 127 ] && rc=$again
      return "$rc"
    fi
  done
}

wait_all() {
  # Wait for every background child in "$@"; return the first failure's exit status (a code
  # other than 0 and 75), else 75 if any child was preempted, else 0.  A failure is never
  # masked by a preemption code, so a crashed node does not get the job requeued.  When one
  # child fails, the others are probably stuck in a collective with it: after $FAIL_GRACE
  # seconds (default 60) they are killed with their processes.
  local -A done_rc=()
  local pid rc first_failure="" preempted=0 failed_at="" grace=${FAIL_GRACE:-60}
  while [ "${#done_rc[@]}" -lt "$#" ]; do
    for pid in "$@"; do
      [ -n "${done_rc[$pid]:-}" ] && continue
      if ! kill -0 "$pid" 2>/dev/null; then
        wait_child "$pid"
        rc=$?
        done_rc[$pid]=$rc
        if [ "$rc" -eq "$PREEMPTED_EXIT_CODE" ]; then
          preempted=1
        elif [ "$rc" -ne 0 ] && [ -z "$first_failure" ]; then
          first_failure=$rc
          failed_at=$SECONDS
          log "process $pid exited with $rc; the others get ${grace} s to finish"
        fi
      fi
    done
    [ "${#done_rc[@]}" -ge "$#" ] && break
    if [ -n "$failed_at" ] && [ $((SECONDS - failed_at)) -ge "$grace" ]; then
      for pid in "$@"; do
        [ -n "${done_rc[$pid]:-}" ] && continue
        log "killing $pid and its processes"
        local tree=()
        mapfile -t tree < <(descendants "$pid")
        kill -KILL "${tree[@]}" "$pid" 2>/dev/null
      done
      failed_at=""
    fi
    # A background sleep keeps this loop responsive to trapped signals.
    sleep 0.5 &
    wait $! 2>/dev/null
  done
  if [ -n "$first_failure" ]; then
    return "$first_failure"
  fi
  [ "$preempted" -eq 1 ] && return "$PREEMPTED_EXIT_CODE"
  return 0
}

load_deepspeed_env() {
  # Export the KEY=VALUE lines of ~/.deepspeed_env and ./.deepspeed_env (file name from
  # DS_ENV_FILE, as in deepspeed), the later file winning.  The deepspeed launcher applies
  # these files only when it starts nodes itself (ssh/pdsh, mpi, slurm); with --no_ssh every
  # node is started by hand and the files are ignored, so the node script reads them here.
  # Values are taken literally (no shell expansion); blank lines and '#' comments are skipped.
  local name=${DS_ENV_FILE:-.deepspeed_env} file line key value files
  if [ "${name#/}" != "$name" ]; then
    files=("$name")
  else
    files=("$HOME/$name" "./$name")
  fi
  for file in "${files[@]}"; do
    [ -f "$file" ] || continue
    while IFS= read -r line || [ -n "$line" ]; do
      line=${line%$'\r'}
      [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
      if [[ "$line" != *=* ]]; then
        log "$file: ignoring a line without '=': $line"
        continue
      fi
      key=${line%%=*}
      value=${line#*=}
      # deepspeed strips both sides of the key and the value
      key=$(echo "$key" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')
      value=$(printf '%s' "$value" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')
      if [[ ! "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
        log "$file: ignoring an invalid variable name: $key"
        continue
      fi
      export "$key=$value"
    done < "$file"
  done
}

remove_shm_buffers() {
  # Delete DeepSpeed's CPU shared-memory all-reduce buffers of the run with master $1:$2 on
  # this machine, once that run has ended.  On CPU, DeepSpeed's shm comm op creates
  # /dev/shm/deepspeed_allreduce_buffer_<n>_<MASTER_ADDR>_<MASTER_PORT>_<local rank> (69 MB
  # each) and never unlinks them, so every CPU run would leave RAM behind in /dev/shm.  The
  # address:port pair was this run's listening socket, so no other live run shares the names.
  [ -n "${1:-}" ] && [ -n "${2:-}" ] || return 0
  rm -f /dev/shm/deepspeed_allreduce_buffer_*_"$1"_"$2"_* 2>/dev/null
  return 0
}
