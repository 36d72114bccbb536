"""One timed training loop (run by bench/train_throughput.py under a launcher).

Modes: ``megaproc`` (the real Trainer), ``deepspeed`` (a bare DeepSpeed engine loop) and
``torch`` (plain PyTorch AdamW, DDP when there are several ranks).  Same model, same batch
geometry, same data source; rank 0 prints one JSON line ``{"mode", "tokens_per_s", ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from megaproc import distributed as dist_utils  # noqa: E402
from megaproc.config import load_config  # noqa: E402
from megaproc.hooks.base import Hook  # noqa: E402


def bench_config(args, out_dir: str):
    return load_config(None, [
        f"run.out_dir={out_dir}", f"model.name={args.model}", f"train.seq_len={args.seq_len}",
        f"train.micro_batch={args.micro_batch}", f"train.grad_accum={args.grad_accum}",
        f"train.max_steps={args.warmup + args.steps}", "log.log_every=10", "log.progress=false",
        "eval.every=0", "eval.at_end=false", "checkpoint.save_every=0", "checkpoint.save_final=false",
        "checkpoint.resume=none", f"deepspeed.config=ds_configs/zero{args.zero}.json",
        "schedule.kind=constant"])


class StepTimer(Hook):
    """Wall time between the end of the warm-up steps and the last step (all ranks in step)."""

    name = "bench_timer"

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.start = self.end = 0.0

    def on_step_end(self, trainer) -> None:
        if trainer.step in (self.warmup, self.warmup + self.steps):
            dist_utils.barrier()
            now = time.perf_counter()
            if trainer.step == self.warmup:
                self.start = now
            else:
                self.end = now


def run_megaproc(args) -> float:
    from megaproc.trainer import Trainer

    timer = StepTimer(args.warmup, args.steps)
    trainer = Trainer(bench_config(args, tempfile.mkdtemp(prefix="bench_megaproc_")), extra_hooks=[timer])
    trainer.train()
    tokens = args.steps * args.grad_accum * args.micro_batch * args.seq_len * dist_utils.world_size()
    return tokens / (timer.end - timer.start)


def _batches(cfg, tokenizer):
    """The same data the trainer would see (built-in corpus), as collated micro-batches."""
    from megaproc.data.batch import collate, rank_sample_indices
    from megaproc.data.build import build_train_valid
    from megaproc.runs import resolve
    from megaproc.tokenizer import pad_id

    t, world = cfg.train, dist_utils.world_size()
    train, _, _ = build_train_valid(resolve(cfg, world).data, tokenizer, t.seq_len, cfg.run.seed,
                                    t.max_steps * t.micro_batch * t.grad_accum * world, 1)
    consumed = 0
    while True:
        for micro in range(t.grad_accum):
            idx = rank_sample_indices(consumed, micro, t.micro_batch, world, dist_utils.rank())
            yield collate([train[int(i)] for i in idx], pad_id(tokenizer), t.seq_len + 1)
        consumed += t.micro_batch * t.grad_accum * world


def _loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch["labels"].reshape(-1),
                           ignore_index=-100)


def run_baseline(args, mode: str) -> float:
    from megaproc.engine import build_ds_config, build_engine, zero_stage
    from megaproc.models.run_model import build_run_model
    from megaproc.runs import resolve, run_kind

    cfg = resolve(bench_config(args, tempfile.mkdtemp(prefix="bench_base_")),
                  dist_utils.world_size())
    tokenizer = run_kind(cfg).build_tokenizer()
    ds_config = build_ds_config(cfg, dist_utils.world_size())
    torch.manual_seed(cfg.run.seed)
    model, _ = build_run_model(cfg.model, tokenizer, ds_config, zero_stage(ds_config), 1)
    batches = _batches(cfg, tokenizer)
    if mode == "deepspeed":
        engine, _ = build_engine(cfg, model, ds_config)

        def step():
            for _ in range(args.grad_accum):
                loss = _loss(engine, next(batches))
                engine.backward(loss)
                engine.step()
    else:
        if dist_utils.world_size() > 1:
            model = torch.nn.parallel.DistributedDataParallel(model)
        optim = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)

        def step():
            for _ in range(args.grad_accum):
                (_loss(model, next(batches)) / args.grad_accum).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optim.step()
            optim.zero_grad(set_to_none=True)
    for _ in range(args.warmup):
        step()
    dist_utils.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    dist_utils.barrier()
    tokens = args.steps * args.grad_accum * args.micro_batch * args.seq_len * dist_utils.world_size()
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["megaproc", "deepspeed", "torch"], required=True)
    parser.add_argument("--model", default="gpt2:4_4_256")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--zero", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--local_rank", type=int, default=None)
    args = parser.parse_args()
    dist_utils.init_distributed(args.local_rank)
    rate = run_megaproc(args) if args.mode == "megaproc" else run_baseline(args, args.mode)
    if dist_utils.is_main():
        print("BENCH_RESULT " + json.dumps({"mode": args.mode, "ranks": dist_utils.world_size(),
                                            "tokens_per_s": rate}), flush=True)


if __name__ == "__main__":
    main()
