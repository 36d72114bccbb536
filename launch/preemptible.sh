#!/usr/bin/env bash
# Run a command with SIGUSR1 and SIGTERM ignored: `launch/preemptible.sh python megaproc/train.py ...`
#
# An ignored disposition survives exec, so the trainer starts immune to the preemption
# signals and only reacts once its preemption hook installs handlers at the start of training;
# at the end of training the hook restores the previous disposition (ignored again).  Without
# this, a SIGUSR1 during start-up or tear-down would kill the process (the default action)
# and the job would end with no checkpoint and no requeue.
trap '' USR1 TERM
exec "$@"
