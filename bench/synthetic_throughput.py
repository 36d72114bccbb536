"""Throughput of the graph-search generator (single process, one core), printed as JSON.

For each lookahead, times ``GraphSearchGenerator.example_at_lookahead`` over consecutive
indices and reports accepted examples per second (rejected draws count against the rate),
the fraction of indices whose draw was rejected, the graphs drawn per index (an index retries
with a new graph until the lookahead matches, and may first build the previous example's graph
to continue it) and the mean prompt length in characters.
Rates are per CPU second of this process (``time.process_time``); wall time is also shown.
Also reports the curriculum's final stage (lookahead uniform in 0..cap).

    python bench/synthetic_throughput.py [--max-input-size 384] [--lookaheads 8 32 62]
                                         [--seconds 3] [--symbolic]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megaproc.synthetic.graph_search import GraphSearchGenerator  # noqa: E402


def count_attempts(generator: GraphSearchGenerator) -> list[int]:
    """Wrap the generator's graph draw to count graphs built (a one-item counter list); this
    includes the previous example's graph that an example continues (see graph_search)."""
    counter = [0]
    draw = generator._draw_graph

    def counted(*args):
        counter[0] += 1
        return draw(*args)

    generator._draw_graph = counted
    return counter


def measure(make_example, seconds: float, attempts: list[int]) -> dict:
    """Call ``make_example(index)`` for consecutive indices for about ``seconds`` of CPU time."""
    attempts[0] = 0
    accepted = rejected = chars = 0
    index = 0
    begin = time.process_time()
    wall = time.perf_counter()
    while True:
        for _ in range(50):
            example = make_example(index)
            index += 1
            if example is None:
                rejected += 1
            else:
                accepted += 1
                chars += len(example.prompt)
        elapsed = time.process_time() - begin
        if elapsed >= seconds:
            break
    return {
        "examples_per_s": round(accepted / elapsed, 1),
        "accepted": accepted,
        "rejected_fraction": round(rejected / index, 4),
        "graph_draws_per_index": round(attempts[0] / index, 3),
        "mean_prompt_chars": round(chars / max(accepted, 1), 1),
        "cpu_s": round(elapsed, 3),
        "wall_s": round(time.perf_counter() - wall, 3),
    }


def trainer_data_wait(args) -> dict:
    """Data wait of the real trainer streaming live examples (one process, final stage).

    Trains ``--trainer-model`` on the live natural-language stream at ``n = --max-input-size``
    for ``--trainer-steps`` steps and reports the trainer's own ``data_wait_frac`` (time spent
    waiting for a batch / step time) from ``train.jsonl``, skipping the first log window.
    """
    import tempfile

    out = tempfile.mkdtemp(prefix="bench_synthetic_")
    overrides = [
        f"run.out_dir={out}", f"model.name={args.trainer_model}",
        f"model.max_position_embeddings={args.trainer_seq_len}",
        f"train.seq_len={args.trainer_seq_len}", "train.micro_batch=2", "train.grad_accum=2",
        f"train.max_steps={args.trainer_steps}", "log.log_every=2", "log.progress=false",
        "checkpoint.save_final=false", "checkpoint.resume=none", "eval.at_end=false",
        "task.kind=graph_search", f"task.max_input_size={args.max_input_size}",
        f"task.max_lookahead={args.max_lookahead}", f"curriculum.start_stage={args.max_lookahead}",
        "deepspeed.config=ds_configs/zero0.json"]
    # stdout carries the JSON result: DeepSpeed's logger binds stdout when first imported.
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        from megaproc import distributed as dist_utils
        from megaproc.config import load_config
        from megaproc.trainer import Trainer

        dist_utils.init_distributed()
        Trainer(load_config(None, overrides)).train()
    records = [json.loads(line) for line in open(Path(out) / "logs" / "train.jsonl")][1:]
    waits = [r["data_wait_frac"] for r in records]
    return {"model": args.trainer_model, "seq_len": args.trainer_seq_len,
            "steps": args.trainer_steps, "stage": args.max_lookahead,
            "data_wait_frac_mean": sum(waits) / len(waits), "data_wait_frac_max": max(waits),
            "target_data_wait_frac": 0.01}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-input-size", type=int, default=384)
    parser.add_argument("--max-lookahead", type=int, default=64,
                        help="curriculum stages (only used for the final-stage measurement)")
    parser.add_argument("--lookaheads", type=int, nargs="+", default=[8, 32, 62])
    parser.add_argument("--seconds", type=float, default=3.0, help="CPU seconds per measurement")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--symbolic", action="store_true", help="symbolic instead of natural language")
    parser.add_argument("--trainer-steps", type=int, default=10,
                        help="steps of the real trainer for the data-wait measurement (0 skips it)")
    parser.add_argument("--trainer-model", default="pythia-14m")
    parser.add_argument("--trainer-seq-len", type=int, default=3072)
    args = parser.parse_args(argv)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # the lookahead-cap warning is expected at 64
        generator = GraphSearchGenerator(args.max_input_size, args.max_lookahead, args.seed,
                                         natural_language=not args.symbolic)
    attempts = count_attempts(generator)
    results = {
        "benchmark": "synthetic_throughput",
        "form": "symbolic" if args.symbolic else "natural_language",
        "max_input_size": args.max_input_size,
        "lookahead_cap": generator.lookahead_cap,
        "processes": 1,
        "python": platform.python_version(),
        "by_lookahead": {},
    }
    for lookahead in args.lookaheads:
        results["by_lookahead"][str(lookahead)] = measure(
            lambda i, L=lookahead: generator.example_at_lookahead(i, L), args.seconds, attempts)
    final = generator.num_stages
    results["final_stage"] = {"stage": final,
                              "max_lookahead_drawn": generator.max_lookahead_for_stage(final),
                              **measure(lambda i: generator.example(i, final), args.seconds, attempts)}
    rates = [r["examples_per_s"] for r in results["by_lookahead"].values()]
    results["min_examples_per_s_per_core"] = min(rates) if rates else None
    if args.trainer_steps and not args.symbolic:
        results["trainer"] = trainer_data_wait(args)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
