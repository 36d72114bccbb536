"""``torchrun --nproc_per_node 2 -m megaproc.evaluate`` prints exactly the JSON of one process.

One 2-rank launch covers every evaluator (--split, --prefix, --hellaswag, --ewok, --dm-math) on
a ZeRO-3 checkpoint written by the real trainer; the batches of every task are shared over the
two gloo ranks and gathered.  Both runs use one intra-op thread (torchrun's default), so the
kernels are the same and the comparison is exact, not approximate.  The checkpoint is read in
memory: nothing is written next to it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyzipper
import pytest

from data_tools.build_splits import build_splits
from data_tools.deepmind_math import convert
from megaproc.distributed import free_port
from megaproc.eval.ewok import DEFAULT_PASSWORD
from megaproc.tokenizer import load_tokenizer
from tests.data.conftest import write_indexed
from tests.data_tools.test_deepmind_math import make_raw
from tests.eval.conftest import CORPUS, EWOK_ROWS, HELLASWAG_ROWS, write_jsonl
from tests.launch import FAST, REPO, env, run

pytestmark = pytest.mark.slow


def _snapshot(root) -> list:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*"))


def test_two_ranks_print_the_json_of_one_rank(tmp_path):
    out = tmp_path / "run"
    proc = run(1, FAST + [f"run.out_dir={out}", "train.max_steps=2", "checkpoint.save_every=2",
                          "deepspeed.config=ds_configs/zero3.json",
                          "model.max_position_embeddings=128"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = out / "checkpoints" / "step_00000002"
    tokenizer = load_tokenizer(ckpt / "tokenizer")

    data = tmp_path / "data"
    hellaswag = write_jsonl(data / "hellaswag.jsonl", HELLASWAG_ROWS * 3)  # 18: odd shares
    ewok_src = write_jsonl(data / "ewok" / "items.jsonl", EWOK_ROWS * 3)
    ewok = data / "ewok_fast_jsonl.zip"  # AES, with the seed's default password
    with pyzipper.AESZipFile(ewok, "w", encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(DEFAULT_PASSWORD.encode())
        zf.write(ewok_src, "ewok_fast/items.jsonl")
    split = build_splits(str(data / "splits"), max_input_size=26, max_lookahead=3, seed=5,
                         eval_size=2, test_size=21, mixin_size=2, progress=False)
    prefix = data / "valid_text"
    write_indexed(prefix, [np.asarray(tokenizer.encode(t) + [tokenizer.eos_token_id])
                           for t in CORPUS[:20]])
    dm_math = data / "dm_math"
    convert(make_raw(data / "raw", splits=("interpolate", "extrapolate")), dm_math)

    args = ["-m", "megaproc.evaluate", "--checkpoint", str(ckpt), "--split",
            f"{split}/test.jsonl", "--prefix", str(prefix), "--hellaswag", str(hellaswag),
            "--ewok", str(ewok), "--dm-math", str(dm_math), "--seq-len", "96",
            "--max-batches", "0", "--batch-size", "3", "--no-progress"]
    before = _snapshot(ckpt)
    variables = env()
    variables.pop("EWOK_ZIP_PASSWORD", None)
    one = subprocess.run([sys.executable, *args, "--items-out", str(tmp_path / "items1.jsonl")],
                         cwd=REPO, env=variables, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(free_port()), *args,
                          "--items-out", str(tmp_path / "items2.jsonl")],
                         cwd=REPO, env=variables, capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]

    single, sharded = json.loads(one.stdout), json.loads(two.stdout)  # rank 0 alone prints
    assert single["run"]["world_size"] == 1 and sharded["run"]["world_size"] == 2
    for result in (single, sharded):
        del result["run"], result["items_out"]
    assert sharded == single
    assert set(single) == {"checkpoint", "split", "prefix", "hellaswag", "ewok", "dm_math"}
    assert single["split"]["num_examples"] > 0 and single["split"]["by_lookahead"]
    assert single["hellaswag"]["hellaswag_num_examples"] == 18
    assert single["ewok"]["ewok_num_items"] == 15
    assert single["dm_math"]["dm_math_num_examples"] == 10
    assert single["prefix"]["num_tokens"] > 0
    rows = (tmp_path / "items1.jsonl").read_text()
    assert rows == (tmp_path / "items2.jsonl").read_text() and rows.count("\n") == \
        single["split"]["num_examples"] + 18 + 15 + 10
    assert _snapshot(ckpt) == before  # consolidated in memory, nothing written
