"""HellaSwag and EWoK during training, every ``eval.hellaswag_every`` / ``eval.ewok_every`` steps.

The items are read once, when the hook is built (a malformed file fails the run before the first
step).  Each rank scores its share of the requests and the results are gathered
(:mod:`megaproc.eval.loglik`: every rank runs the same number of forwards, as ZeRO-3 needs), with
the engine in eval mode.  One record per evaluation step goes to ``logs/eval.jsonl`` (and the
seed's ``step_metrics.json``, see :class:`~megaproc.hooks.records.EvalLog`):

``hellaswag_acc, hellaswag_acc_norm, hellaswag_num_examples``
``ewok_sum_accuracy, ewok_sum_accuracy_t1, ewok_sum_accuracy_t2, ewok_mean_accuracy,
ewok_mean_accuracy_t1, ewok_mean_accuracy_t2, ewok_num_items`` and ``ewok_domain/<Domain>`` (the
``sum`` accuracy of each domain)

and the EWoK item rows, with ``step``, to ``RUN_DIR/ewok_items.jsonl`` (the seed's file).  With
``eval.at_end`` both run once more after the last step unless that step just ran them.  After a
resume, records past the resumed step are dropped (those steps are redone).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from types import SimpleNamespace

from megaproc import distributed as dist_utils
from megaproc.eval.ewok import evaluate_ewok, load_ewok
from megaproc.eval.hellaswag import evaluate_hellaswag, load_hellaswag
from megaproc.eval.loglik import LoglikScorer, context_length, hf_logits_fn
from megaproc.eval.forward import eval_mode
from megaproc.hooks.base import Hook
from megaproc.hooks.records import EvalLog, drop_records_after


class BenchmarkEvalHook(Hook):
    """Periodic HellaSwag / EWoK evaluation of the training engine."""

    name = "benchmark_eval"
    priority = 40

    def __init__(self, eval_cfg, run_dir: Path, tokenizer, max_length: int, rank: int,
                 world_size: int, batch_size: int = 16):
        self.cfg = eval_cfg
        self.run_dir = Path(run_dir)
        self.log = EvalLog(run_dir)
        self.items_path = self.run_dir / "ewok_items.jsonl"
        self.rank, self.world_size = rank, world_size
        self.every = {"hellaswag": int(eval_cfg.hellaswag_every or 0),
                      "ewok": int(eval_cfg.ewok_every or 0)}
        self.hellaswag = load_hellaswag(eval_cfg.hellaswag_path) if self.every["hellaswag"] else None
        self.ewok = load_ewok(eval_cfg.ewok_path) if self.every["ewok"] else None
        self.scorer = LoglikScorer(tokenizer, max_length, batch_size)
        self.last_step = None

    @classmethod
    def from_config(cls, eval_cfg, inputs) -> "BenchmarkEvalHook":
        """The hook of a run (``inputs``: :class:`megaproc.runs.base.HookInputs`); benchmarks are
        scored at the model's own context, not the training sequence length."""
        context = context_length(SimpleNamespace(config=inputs.hf_config))
        return cls(eval_cfg, inputs.run_dir, inputs.tokenizer, context, inputs.rank,
                   inputs.world_size)

    def due(self, step: int) -> list[str]:
        """The benchmarks whose period divides ``step``."""
        return [name for name, every in self.every.items() if every and step % every == 0]

    def run(self, trainer, names: list[str]) -> dict:
        """Evaluate ``names`` (collective), write one record and return it."""
        engine = trainer.engine
        self.scorer.device = trainer.device
        logits_fn = hf_logits_fn(engine)
        metrics: dict = {}
        with eval_mode(engine), torch.no_grad():
            if "hellaswag" in names and self.hellaswag is not None:
                summary, _ = evaluate_hellaswag(self.scorer, logits_fn, self.hellaswag,
                                                self.rank, self.world_size)
                metrics.update(hellaswag_acc=summary["acc"], hellaswag_acc_norm=summary["acc_norm"],
                               hellaswag_num_examples=summary["num_examples"])
            if "ewok" in names and self.ewok is not None:
                summary, rows = evaluate_ewok(self.scorer, logits_fn, self.ewok, self.rank,
                                              self.world_size)
                for reduction in ("sum", "mean"):
                    for key in ("accuracy", "accuracy_t1", "accuracy_t2"):
                        metrics[f"ewok_{reduction}_{key}"] = summary[reduction][key]
                metrics["ewok_num_items"] = summary["num_items"]
                metrics.update({f"ewok_domain/{domain}": value
                                for domain, value in summary["sum"]["by_domain"].items()})
                self._write_items(trainer.step, rows)
        self.last_step = trainer.step
        return self.log.write(trainer, metrics, event="benchmark")

    def _write_items(self, step: int, rows: list[dict]) -> None:
        if not dist_utils.is_main():
            return
        with open(self.items_path, "a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps({"step": step, **row}, default=str) + "\n")

    def on_train_start(self, trainer) -> None:
        self.log.open(trainer.step)
        if dist_utils.is_main():
            drop_records_after(self.items_path, trainer.step)

    def on_step_end(self, trainer) -> None:
        names = self.due(trainer.step)
        if names:
            self.run(trainer, names)

    def on_train_end(self, trainer) -> None:
        done = trainer.exit_code == 0 and trainer.step > 0  # not after a preemption
        if self.cfg.at_end and done and self.last_step != trainer.step:
            self.run(trainer, [name for name, every in self.every.items() if every])
