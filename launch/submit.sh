#!/usr/bin/env bash
# Submit a megaproc SLURM job after creating its log folder; prints what sbatch prints.
#
#   launch/submit.sh [sbatch options] launch/pptrain.sbatch [trainer overrides a.b=value ...]
#   launch/submit.sh --nodes=2 --time=12:00:00 launch/train.sbatch configs/pretrain.yaml
#
# SLURM does not create the directory of --output: with a missing `slurm/` the job fails
# before its script runs and leaves no log at all.  This creates `slurm/` in the job's working
# directory (the current one, or --chdir/-D), and the directory of an --output/--error given
# here, then runs sbatch with MEGAPROC_ROOT exported so the job finds this repository from
# SLURM's spool copy of the script.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export MEGAPROC_ROOT=${MEGAPROC_ROOT:-$(cd "$here/.." && pwd)}

workdir=$PWD
logdirs=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  a=${args[i]}
  next=${args[i + 1]:-}
  case $a in
    --chdir=*) workdir=${a#--chdir=} ;;
    --chdir | -D) workdir=$next ;;
    -D?*) workdir=${a#-D} ;;
    --output=* | --error=*) logdirs+=("$(dirname "${a#*=}")") ;;
    --output | --error | -o | -e) logdirs+=("$(dirname "$next")") ;;
    *.sbatch | *.sh) [ -f "$a" ] && break ;;  # the job script: the rest are its arguments
  esac
done
mkdir -p "$workdir/slurm"
for d in "${logdirs[@]}"; do
  case $d in
    /*) mkdir -p "$d" ;;
    *) mkdir -p "$workdir/$d" ;;
  esac
done
exec sbatch "$@"
