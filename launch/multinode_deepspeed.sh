#!/usr/bin/env bash
# Multi-node launch with the deepspeed launcher and a hostfile (no SLURM), e.g.
#   launch/multinode_deepspeed.sh hostfile configs/pretrain.yaml run.out_dir=runs/pretrain
# hostfile lines: "<host> slots=<gpus>".  Without passwordless ssh, start this once per node
# with NODE_RANK=0..N-1 and MASTER_ADDR set (uses --no_ssh).
set -euo pipefail
HOSTFILE="$1"; CONFIG="$2"; shift 2
MASTER_ADDR="${MASTER_ADDR:-$(head -n 1 "$HOSTFILE" | awk '{print $1}')}"
MASTER_PORT="${MASTER_PORT:-29500}"
if [ -n "${NODE_RANK:-}" ]; then
  exec deepspeed --hostfile "$HOSTFILE" --no_ssh --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    megaproc/train.py --config "$CONFIG" "$@"
fi
exec deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  megaproc/train.py --config "$CONFIG" "$@"
