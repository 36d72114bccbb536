#!/usr/bin/env bash
# Multi-node launch with the deepspeed launcher and a hostfile (no SLURM), e.g.
#   launch/multinode_deepspeed.sh hostfile configs/pretrain.yaml run.out_dir=runs/pretrain
# hostfile lines: "<host> slots=<gpus>" (launch/hostfile.example).
#
# With passwordless ssh, run this once on the first host: deepspeed starts every node over
# pdsh and exports ~/.deepspeed_env and ./.deepspeed_env there.  Without ssh, start it once per
# node with NODE_RANK=0..N-1 and the same MASTER_ADDR (default: the hostfile's first host):
# each node then runs launch/deepspeed_node.sh (--no_ssh), which reads .deepspeed_env itself
# and turns SIGUSR1/SIGTERM into a checkpoint and exit 75 (see there).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ "$#" -lt 2 ]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
HOSTFILE="$1"; CONFIG="$2"; shift 2
MASTER_ADDR="${MASTER_ADDR:-$(grep -v '^[[:space:]]*\(#\|$\)' "$HOSTFILE" | head -n 1 | awk '{print $1}')}"
MASTER_PORT="${MASTER_PORT:-29500}"
if [ -n "${NODE_RANK:-}" ]; then
  exec "$here/deepspeed_node.sh" --hostfile "$HOSTFILE" --no_ssh --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    megaproc/train.py --config "$CONFIG" "$@"
fi
exec "${PYTHON:-python}" -m deepspeed.launcher.runner --hostfile "$HOSTFILE" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  megaproc/train.py --config "$CONFIG" "$@"
