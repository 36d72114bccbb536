"""Step time of a quickstart-size causal-LM step with and without document masking.

One process, CPU, fp32: the quickstart model (``gpt2:2_4_128``), micro batch 8, ``seq_len`` 128,
AdamW; samples are windows of a packed token stream of random documents (10-200 tokens, EOD
after each).  Per variant, one micro-batch is collated and trained (forward, loss, backward,
optimizer step) ``--steps`` times, the variants interleaved round by round so drift in the
machine's load hits all alike; the median seconds per step are reported:

``baseline``   ``collate`` and the HF model called directly with the 2-D padding mask and a
               plain cross entropy (what a step was before document masking existed);
``off``        ``CausalLMRun.forward_loss`` with the three switches off (the shipped path);
``positions``  ``data.reset_position_ids`` only; ``eod_loss`` ``data.eod_mask_loss`` only;
``all``        the three switches (a [B, 1, T, T] boolean mask per micro-batch, sdpa).

``ratio_over_baseline`` > 1 is slower.  ``off`` must stay at ~1.0: nothing is built when the
switches are off.  ``collate_ms`` is the collate time alone (the masks are computed there).

    python bench/document_mask_step.py [--steps 30] [--threads 1] [--attention sdpa]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from megaproc.config import Config  # noqa: E402
from megaproc.data.batch import IGNORE_INDEX, collate  # noqa: E402
from megaproc.data.document_mask import DocumentMasking  # noqa: E402
from megaproc.models import build_model  # noqa: E402
from megaproc.runs.base import CausalLMRun  # noqa: E402

VOCAB, EOD, PAD, MICRO, SEQ = 2048, 0, 1, 8, 128
VARIANTS = {"baseline": None, "off": None, "positions": (True, False, False),
            "eod_loss": (False, False, True), "all": (True, True, True)}


def packed_samples(seed: int) -> list[dict]:
    """``MICRO`` windows of ``SEQ + 1`` tokens of a stream of random EOD-terminated documents."""
    rng = np.random.default_rng(seed)
    stream = []
    while len(stream) < MICRO * (SEQ + 1):
        stream += list(rng.integers(2, VOCAB, int(rng.integers(10, 200)))) + [EOD]
    stream = np.asarray(stream, dtype=np.int64)
    return [{"tokens": stream[i * (SEQ + 1):(i + 1) * (SEQ + 1)]} for i in range(MICRO)]


def baseline_step(model, samples) -> torch.Tensor:
    batch = collate(samples, PAD, pad_to=SEQ + 1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits.reshape(-1, VOCAB), batch["labels"].reshape(-1),
                           ignore_index=IGNORE_INDEX)


def run_step(kind: CausalLMRun, model, samples, switches) -> torch.Tensor:
    documents = DocumentMasking(EOD, *switches) if switches else None
    batch = collate(samples, PAD, pad_to=SEQ + 1, documents=documents)
    return kind.forward_loss(model, batch, torch.device("cpu")).loss


def collate_ms(samples, switches, repeats: int = 200) -> float:
    documents = DocumentMasking(EOD, *switches) if switches else None
    begin = time.perf_counter()
    for _ in range(repeats):
        collate(samples, PAD, pad_to=SEQ + 1, documents=documents)
    return 1000 * (time.perf_counter() - begin) / repeats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--attention", default="sdpa", choices=("sdpa", "eager"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model({"name": "gpt2:2_4_128", "dropout": 0.0,
                         "config_overrides": f"attn_implementation={args.attention}"},
                        vocab_size=VOCAB).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    kind = CausalLMRun(Config())
    samples = packed_samples(0)
    times = {name: [] for name in VARIANTS}
    for step in range(args.steps + 3):  # 3 warm-up rounds
        for name, switches in VARIANTS.items():
            begin = time.perf_counter()
            loss = baseline_step(model, samples) if name == "baseline" else \
                run_step(kind, model, samples, switches)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= 3:
                times[name].append(time.perf_counter() - begin)
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "bench": "document_mask_step", "model": "gpt2:2_4_128", "attention": args.attention,
        "micro_batch": MICRO, "seq_len": SEQ, "steps": args.steps, "threads": args.threads,
        "eod_per_row": float(np.mean([int((s["tokens"][:-1] == EOD).sum()) for s in samples])),
        "s_per_step": {k: round(v, 5) for k, v in median.items()},
        "ratio_over_baseline": {k: round(v / median["baseline"], 3) for k, v in median.items()},
        "collate_ms": {name: round(collate_ms(samples, VARIANTS[name]), 3)
                       for name in ("off", "all")},
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
