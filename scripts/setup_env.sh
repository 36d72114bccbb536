#!/usr/bin/env bash
# Install what megaproc needs into the current Python environment, skipping what is there.
# - torch: kept if already importable (e.g. a CUDA build on a GPU machine); otherwise
#   torch==2.13.0 (a local CPU wheel on our CPU machines).
# - megaproc itself (editable) with the [test] extra, re-run only when setup.py changed.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
cd "$(dirname "$0")/.."
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing torch==2.13.0"
  "$PYTHON" -m pip install -q "torch==2.13.0"
fi
stamp=".setup_stamp"
want="$("$PYTHON" -c 'import hashlib,sys;print(hashlib.sha256(open("setup.py","rb").read()).hexdigest()+sys.prefix)')"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$PYTHON" -c "import megaproc, deepspeed, transformers, pytest" >/dev/null 2>&1; then
  echo "[setup] installing megaproc and its dependencies"
  "$PYTHON" -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
