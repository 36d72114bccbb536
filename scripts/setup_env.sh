#!/usr/bin/env bash
# Install what megaproc needs into the current Python environment, skipping what is there.
# - torch: kept if already importable (e.g. a CUDA build on a GPU machine); otherwise
#   torch==2.13.0 (a local CPU wheel on our CPU machines).
# - megaproc itself (editable) with the [test] extra, re-run only when setup.py changed.
# - DeepSpeed's CPU communication op, compiled once here: DeepSpeed JIT-compiles it (~40 s)
#   in every rank's init_distributed on a CPU machine where it is not cached yet, which would
#   otherwise land inside the first training run (the equivalent of DS_BUILD_OPS at install).
set -euo pipefail
PYTHON="${PYTHON:-python3}"
cd "$(dirname "$0")/.."
# find_spec looks the packages up without importing them (importing torch, deepspeed and
# transformers costs ~6 s, paid by every `make quickstart` / `make test` otherwise).
installed() { "$PYTHON" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" "$@" >/dev/null 2>&1; }
if ! installed torch; then
  echo "[setup] installing torch==2.13.0"
  "$PYTHON" -m pip install -q "torch==2.13.0"
fi
stamp=".setup_stamp"
want="$("$PYTHON" -c 'import hashlib,sys;print(hashlib.sha256(open("setup.py","rb").read()).hexdigest()+sys.prefix)')"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! installed megaproc deepspeed transformers pytest; then
  echo "[setup] installing megaproc and its dependencies"
  "$PYTHON" -m pip install -q -e ".[test]"
  echo "[setup] building DeepSpeed's CPU communication op (once)"
  "$PYTHON" -c "from megaproc.distributed import build_cpu_comm_op; build_cpu_comm_op()"
  echo "$want" > "$stamp"
fi
