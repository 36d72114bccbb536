"""The Trainer: builds a run's components from its config and runs the short train loop.

Components are built by their own builders from explicit arguments (tokenizer, batch source,
model, DeepSpeed engine and LR schedule, hooks, :class:`~megaproc.checkpoint.Checkpointer`);
the loop is forward -> loss -> backward -> step -> hook events.  Hooks end training through
:meth:`Trainer.request_stop`.
"""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from megaproc import distributed as dist_utils
from megaproc.checkpoint import Checkpointer, ResumeError, read_trainer_state
from megaproc.checkpoint.reshard import configure_ds_config
from megaproc.config import Config, experiment_settings, fingerprint, to_dict, to_yaml
from megaproc.console_log import get_logger
from megaproc.data.run_sources import build_batch_source, data_fingerprint
from megaproc.engine import build_ds_config, build_engine, zero_stage
from megaproc.errors import ConfigError
from megaproc.flops import mfu, model_flops_per_token, peak_flops
from megaproc.hooks import Hook, Hooks, build_hooks
from megaproc.loss import classification_loss, training_loss, training_mask
from megaproc.metrics import LossMeter
from megaproc.models.sliced_head import forward_logits, head_positions, sliced_token_cross_entropy
from megaproc.task_vocab import task_tokenizer
from megaproc.tokenizer import build_run_tokenizer, load_tokenizer, pad_id, symbol_tokenizer

log = get_logger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_classify_plan(cfg: Config, world_size: int) -> None:
    """Classification runs: ``classify.n_epochs`` epochs of ``train_set_size`` examples set
    ``train.max_steps``, and the LR anneals by cosine from ``optim.lr`` to ``classify.eta_min``
    (``torch.optim.lr_scheduler.CosineAnnealingLR`` over the run's steps, no warmup)."""
    c, t = cfg.classify, cfg.train
    if c.target_func is None:
        return
    global_batch = t.micro_batch * t.grad_accum * world_size
    t.max_steps = max(1, math.ceil(c.n_epochs * c.train_set_size / global_batch))
    cfg.schedule.kind, cfg.schedule.warmup_steps = "cosine", 0
    cfg.schedule.min_lr_ratio = min(1.0, c.eta_min / cfg.optim.lr)


def resolve_grad_accum(cfg: Config, world_size: int) -> None:
    """Derive ``train.grad_accum`` from ``train.total_batch_tokens`` when that is set."""
    t = cfg.train
    if t.total_batch_tokens is None:
        return
    per_step = t.micro_batch * t.seq_len * world_size
    if t.total_batch_tokens % per_step:
        raise ConfigError(f"config key 'train.total_batch_tokens' ({t.total_batch_tokens}) must be "
                          f"a multiple of micro_batch * seq_len * world size ({per_step})")
    t.grad_accum = t.total_batch_tokens // per_step


class Trainer:
    """One training run: ``Trainer(cfg).train()`` returns the process exit code."""

    def __init__(self, cfg: Config, extra_hooks: list[Hook] | None = None):
        self.cfg = cfg
        self.run_dir = Path(cfg.run.out_dir)
        self.rank, self.world_size = dist_utils.rank(), dist_utils.world_size()
        self.device = dist_utils.device()
        self.step = 0
        self.exit_code = 0
        self.stop_reason: str | None = None
        self.source = None
        self._source_closed = False
        self.hooks = Hooks()
        resolve_grad_accum(cfg, self.world_size)
        resolve_classify_plan(cfg, self.world_size)
        self.config_dict = to_dict(cfg)
        self.checkpointer = Checkpointer.from_config(self.run_dir, cfg.checkpoint)

        resume_from = self.checkpointer.find_resume()
        self.tokenizer = self._build_tokenizer()
        self.pad_id = pad_id(self.tokenizer)
        self.data_fingerprint = data_fingerprint(cfg, self.tokenizer)
        self.plan_changes: list[str] = []
        if resume_from is not None:  # refuse a bad resume before the run dir or engine is touched
            self.plan_changes = self.checkpointer.check_resume(resume_from, self.geometry(),
                                                               self.settings())
        self.source, valid = build_batch_source(cfg, self.tokenizer, self.rank, self.world_size,
                                                self.pad_id, log.info)
        self._prepare_run_dir(resume_from)
        seed_everything(cfg.run.seed)
        self.ds_config = build_ds_config(cfg, self.world_size)
        # A checkpoint of another world size loads as a universal checkpoint (reshard.py).
        configure_ds_config(self.ds_config, resume_from, self.world_size, cfg.checkpoint)
        model = self._build_model()
        self.hf_config = model.config
        self.engine, self.schedule = build_engine(cfg, model, self.ds_config)
        # Dropout streams differ per rank; resumes restore them from the checkpoint.
        seed_everything(cfg.run.seed + 1000003 * (self.rank + 1))
        self.meter = LossMeter(len(self.source.names), self.device)
        self.flops_per_token, self.peak_flops = self._flops_setup()
        self.hooks = Hooks(build_hooks(cfg, self.run_dir, self.tokenizer, self.source, valid,
                                       self.hf_config, self.device, self.rank,
                                       self.world_size, self.pad_id) + list(extra_hooks or []))
        log.info(f"hooks: {self.hooks.describe()}")
        if resume_from is not None:
            self.load_checkpoint(resume_from)

    # ----------------------------------------------------------------- set-up
    def _build_tokenizer(self):
        """The run's tokenizer; from-scratch classifiers get their symbol tokenizer, finetune
        wrappers the tokenizer of ``model.pretrained_path`` unless ``data.tokenizer`` is set."""
        cfg = self.cfg
        task_vocabulary = task_tokenizer(cfg.task)  # task.tokenizer: symbolic
        if task_vocabulary is not None:
            return task_vocabulary
        if cfg.classify.target_func is None or cfg.data.tokenizer:
            return build_run_tokenizer(cfg.data, log=log.info)
        from megaproc.models.classification import FINETUNE_WRAPPERS
        from megaproc.synthetic.boolean import get_function

        if cfg.model.name in FINETUNE_WRAPPERS:
            return load_tokenizer(cfg.model.pretrained_path)
        return symbol_tokenizer(get_function(cfg.classify.target_func).alphabet)

    def _build_model(self):
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        if self.cfg.classify.target_func is not None:
            from megaproc.models.classification import build_run_classifier

            return build_run_classifier(self.cfg, self.tokenizer, self.ds_config)
        from megaproc.models.run_model import build_run_model
        from megaproc.models.transfer import write_transfer_report

        model, report = build_run_model(self.cfg.model, self.tokenizer, self.ds_config,
                                        zero_stage(self.ds_config), local_world)
        if report is not None and dist_utils.is_main():
            log.info(write_transfer_report(self.run_dir / "transfer.json", report))
        return model

    def _flops_setup(self) -> tuple[float | None, float | None]:
        """Model FLOPs per token and per-device peak FLOP/s for the logged ``mfu``
        (``train.peak_flops``, else the GPU's known bf16 peak; none on CPU unless set)."""
        peak = self.cfg.train.peak_flops or peak_flops(self.device)
        try:
            per_token = model_flops_per_token(self.hf_config, self.cfg.train.seq_len)
        except (ValueError, AttributeError, KeyError) as exc:  # an architecture flops.py lacks
            log.info(f"mfu not logged: {exc}")
            return None, peak
        return per_token, peak

    def _prepare_run_dir(self, resume_from: Path | None) -> None:
        """Refuse to overwrite a finished run; write the resolved config before step 0."""
        if resume_from is None and self.checkpointer.existing():
            raise ResumeError(f"run.out_dir {self.run_dir} already holds checkpoints; resume with "
                              "checkpoint.resume=auto or choose a new run.out_dir")
        logs = self.run_dir / "logs"
        restarted = resume_from is None and (logs / "train.jsonl").is_file()
        if restarted and self.cfg.checkpoint.resume != "auto":
            raise ResumeError(f"run.out_dir {self.run_dir} already holds logs of another run; "
                              "choose a new run.out_dir")
        dist_utils.barrier()  # every rank has looked before rank 0 moves anything
        if dist_utils.is_main():
            if restarted:  # a job restarted before its first checkpoint: start over, keep logs
                kept = self.run_dir / f"logs.before_restart_{time.strftime('%Y%m%d-%H%M%S')}"
                logs.rename(kept)
                log.info(f"no checkpoint to resume; previous logs moved to {kept}")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.checkpointer.recover()
            path = self.run_dir / "config.yaml"
            text = to_yaml(self.cfg)
            if path.is_file() and path.read_text() != text:
                step = read_trainer_state(resume_from)["step"] if resume_from else 0
                path.rename(self.run_dir / f"config.before_step{step}.yaml")
            path.write_text(text)
        dist_utils.barrier()

    # ----------------------------------------------------------------- loop
    def request_stop(self, reason: str, exit_code: int = 0) -> None:
        """End training after the current step (the one stop channel of hooks)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.exit_code = max(self.exit_code, int(exit_code))

    def train(self) -> int:
        """Run until ``train.max_steps`` or a stop request; returns the process exit code."""
        try:
            self.engine.train()
            self.hooks.on_train_start(self)
            self._window_start, self._data_wait = time.perf_counter(), 0.0
            while self.step < self.cfg.train.max_steps and self.stop_reason is None:
                self._train_step()
            if self.stop_reason is not None:
                log.info(f"training stopped at step {self.step}: {self.stop_reason}")
            self.hooks.on_train_end(self)
        except BaseException as error:
            self.hooks.on_error(self, error)
            raise
        finally:
            self.close()
        return self.exit_code

    def _train_step(self) -> None:
        step_lr = self.engine.get_lr()[0]
        for micro_step in range(self.cfg.train.grad_accum):
            t0 = time.perf_counter()
            batch = self.source.micro_batch_at(micro_step)
            self._data_wait += time.perf_counter() - t0
            batch = self.hooks.on_batch(self, batch)
            loss = self.forward_loss(batch)
            # DeepSpeed scales the loss by 1/grad_accum in backward() and wants step() after every
            # micro-step: it only updates the weights (and steps the LR schedule) at the
            # accumulation boundary, and skips the gradient all-reduce before it.
            self.engine.backward(loss)
            self.engine.step()
        self.source.advance()
        self.step += 1
        metrics = {"step": self.step}
        if self.step % self.cfg.log.log_every == 0 or self.step == self.cfg.train.max_steps:
            elapsed = time.perf_counter() - self._window_start
            metrics.update(self._log_metrics(elapsed, self._data_wait), lr=step_lr)
            self._window_start, self._data_wait = time.perf_counter(), 0.0
        self.hooks.on_step_end(self, metrics)

    def forward_loss(self, batch: dict) -> torch.Tensor:
        """Forward one micro-batch; returns the loss to backpropagate (hooks may replace it)."""
        labels = batch["labels"].to(self.device)
        input_ids = batch["input_ids"].to(self.device)
        attention_mask = batch["attention_mask"].to(self.device)
        if labels.dim() == 1:  # sequence classification: one logit per sequence
            logits = self.engine(input_ids=input_ids, attention_mask=attention_mask).logits
            per_token, loss = classification_loss(logits, labels)
            mask = torch.ones_like(per_token, dtype=torch.bool)
        else:
            answer = batch["answer_mask"].to(self.device)
            example_id, primary = batch.get("example_id"), batch.get("primary")
            # The head only where the loss and the correctness check read (None: everywhere);
            # hooks then get [N, V] logits at batch["head_positions"].
            positions = None
            if self.cfg.train.sliced_head:
                positions = head_positions(self.cfg.train.loss, labels, answer,
                                           batch.get("word_mask"), batch.get("boundary_mask"))
            if positions is not None:
                batch["head_positions"] = positions
            logits = forward_logits(self.engine, input_ids, attention_mask, positions)
            per_token = sliced_token_cross_entropy(logits, labels, positions)
            loss = training_loss(self.cfg.train.loss, per_token, labels, answer, example_id, primary,
                                 batch.get("word_mask"))
            mask = training_mask(self.cfg.train.loss, labels, answer, primary, batch.get("word_mask"))
        loss = self.hooks.on_loss(self, batch, logits, per_token, loss)
        self.meter.add(per_token, mask, batch["source"])
        return loss

    def _log_metrics(self, elapsed: float, data_wait: float) -> dict:
        """Reduce the meters over ranks (collective) into the train.jsonl fields."""
        reduced = self.meter.reduce()
        metrics = {
            "loss": reduced["loss"],
            "tokens": reduced["total_tokens"],
            "samples": self.source.consumed,
            "tokens_per_s": reduced["tokens"] / max(elapsed, 1e-9),
            "grad_norm": _float_or_none(self.engine.get_global_grad_norm()),
            "data_wait_frac": data_wait / max(elapsed, 1e-9),
        }
        if self.flops_per_token and self.peak_flops:
            metrics["mfu"] = mfu(metrics["tokens_per_s"], self.flops_per_token, self.peak_flops,
                                 self.world_size)
        for name, value in zip(self.source.names, reduced["per_source"]):
            if value is not None:
                metrics[f"loss/{name}"] = value
        return metrics

    def close(self) -> None:
        """Close hooks (loggers, progress bars) and the batch source; safe to call twice."""
        self.hooks.close()
        self.hooks = Hooks()
        if self.source is not None and not self._source_closed:
            self.source.close()
            self._source_closed = True

    # ----------------------------------------------------------------- checkpoints
    def geometry(self) -> dict:
        """Batch settings and data a resume must keep."""
        t = self.cfg.train
        return {"train.micro_batch": t.micro_batch, "train.grad_accum": t.grad_accum,
                "world_size": self.world_size, "train.seq_len": t.seq_len,
                "data_fingerprint": self.data_fingerprint}

    def settings(self) -> dict:
        """The experiment settings and plan a resume may change (reported and applied)."""
        return {**experiment_settings(self.cfg), "train.max_steps": self.cfg.train.max_steps}

    def trainer_state(self) -> dict:
        """Everything besides the engine that a resume needs (collective: token count)."""
        return {
            "consumed_samples": self.source.consumed,
            "consumed_per_source": dict(zip(self.source.names, self.source.consumed_per_source())),
            "tokens": self.meter.total_tokens(),
            "data": self.source.state_dict(),
            "hooks": self.hooks.state_dict(),
            "geometry": self.geometry(),
            "settings": self.settings(),
            "config_fingerprint": fingerprint(self.cfg),
        }

    def save_checkpoint(self) -> Path | None:
        """Save the checkpoint for the current step (collective; a no-op if already saved)."""
        path = self.checkpointer.save(self.step, self.engine, self.trainer_state(),
                                      self.hf_config, self.tokenizer)
        if path is not None:
            self.hooks.on_save(self, str(path))
        return path

    def load_checkpoint(self, path: Path) -> None:
        """Resume engine, LR schedule, data position, hooks and RNG from ``path``."""
        state = self.checkpointer.load(path, self.engine)
        self.step = int(state["step"])
        # DeepSpeed restored the saved param-group LRs with the optimizer state: re-apply the
        # running config's schedule at this step, so a changed plan takes effect now.
        self.schedule.load_state_dict({"last_step": self.step})
        self.meter.restore_total_tokens(int(state.get("tokens", 0)))
        self.source.load_state_dict(state["data"])
        self.hooks.load_state_dict(state.get("hooks", {}))
        self.hooks.on_load(self, str(path))
        log.info(f"resumed from {path} at step {self.step}")
        if self.plan_changes:
            log.info(f"changed plan applied from step {self.step}: {'; '.join(self.plan_changes)}")


def _float_or_none(value) -> float | None:
    if value is None:
        return None
    return float(value.item() if torch.is_tensor(value) else value)
