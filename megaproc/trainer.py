"""The Trainer: builds a run's components from its resolved config and runs the short loop.

What differs between workflows (tokenizer, data, model, loss, default hooks) comes from the run's
:class:`~megaproc.runs.base.RunKind`; the trainer has no workflow branch.  Components are built
from explicit arguments in an order that refuses a bad resume before anything is written; the
loop is forward -> loss -> backward -> step -> hook events.  Hooks record metrics through
:meth:`Trainer.record_metric`, ask for a checkpoint with :meth:`Trainer.request_checkpoint` and
end training through :meth:`Trainer.request_stop`.
"""

from __future__ import annotations

import hashlib
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
from megaproc.engine import build_ds_config, build_engine, zero_stage
from megaproc.files import atomic_write_text
from megaproc.flops import mfu, model_flops_per_token, peak_flops
from megaproc.hooks import Hook, Hooks
from megaproc.metrics import LossMeter
from megaproc.runs import HookInputs, is_resolved, resolve, run_kind
from megaproc.tokenizer import pad_id

log = get_logger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def micro_batch_seed(run_seed: int, sample_offset: int) -> int:
    """The torch seed of the micro-batch whose first sample is global sample ``sample_offset``.

    Dropout masks are drawn from it, so the masks of a sample depend on the run seed and where
    the sample sits in the global order (its micro-batch's offset and its row), never on which
    rank runs it: a resume on another world size (which keeps the micro batch and the global
    order) draws exactly the masks an uninterrupted run would.
    """
    digest = hashlib.blake2b(f"{run_seed}:{sample_offset}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class Trainer:
    """One training run: ``Trainer(cfg).train()`` returns the process exit code."""

    def __init__(self, cfg: Config, extra_hooks: list[Hook] | None = None):
        self.rank, self.world_size = dist_utils.rank(), dist_utils.world_size()
        if not is_resolved(cfg, self.world_size):
            cfg = resolve(cfg, self.world_size)
        self.cfg = cfg
        self.kind = run_kind(cfg)
        self.run_dir = Path(cfg.run.out_dir)
        self.device = dist_utils.device()
        self.step = 0
        self.exit_code = 0
        self.stop_reason: str | None = None
        self.checkpoint_requested = False
        self._recorded: dict = {}
        self.source = None
        self._source_closed = False
        self.hooks = Hooks()
        self.config_dict = to_dict(cfg)
        self.checkpointer = Checkpointer.from_config(self.run_dir, cfg.checkpoint)

        resume_from = self.checkpointer.find_resume()
        self.tokenizer = self.kind.build_tokenizer()
        self.pad_id = pad_id(self.tokenizer)
        self.data_fingerprint = self.kind.data_fingerprint(self.tokenizer)
        self.changed_settings: list[str] = []
        if resume_from is not None:  # refuse a bad resume before the run dir or engine is touched
            self.changed_settings = self.checkpointer.check_resume(resume_from, self.geometry(),
                                                                   self.settings())
        self.source, valid = self.kind.build_data(self.tokenizer, self.rank, self.world_size,
                                                  self.pad_id, log.info)
        self._prepare_run_dir(resume_from)
        seed_everything(cfg.run.seed)
        self.ds_config = build_ds_config(cfg, self.world_size)
        # A checkpoint of another world size loads as a universal checkpoint (reshard.py).
        configure_ds_config(self.ds_config, resume_from, self.world_size, cfg.checkpoint)
        model = self.kind.build_model(self.tokenizer, self.ds_config, self.run_dir,
                                      zero_stage(self.ds_config))
        self.hf_config = model.config
        self.engine, self.schedule = build_engine(cfg, model, self.ds_config)
        self.meter = LossMeter(len(self.source.names), self.device)
        self.flops_per_token, self.peak_flops = self._flops_setup()
        inputs = HookInputs(cfg, self.run_dir, self.tokenizer, self.source, valid, self.hf_config,
                            self.device, self.rank, self.world_size, self.pad_id, log.info)
        self.hooks = Hooks(self.kind.hooks(inputs) + list(extra_hooks or []))
        log.info(f"run kind {self.kind.name}; hooks: {self.hooks.describe()}")
        if resume_from is not None:
            self.load_checkpoint(resume_from)

    # ----------------------------------------------------------------- set-up
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
            atomic_write_text(path, text)
        dist_utils.barrier()

    # ----------------------------------------------------------------- requests from hooks
    def request_stop(self, reason: str, exit_code: int = 0) -> None:
        """End training after the current step (the one stop channel of hooks)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.exit_code = max(self.exit_code, int(exit_code))

    def request_checkpoint(self) -> None:
        """Ask the checkpointing hook to save at the end of this step (e.g. on preemption)."""
        self.checkpoint_requested = True

    def record_metric(self, name: str, value) -> None:
        """Record a metric of the current step; it is logged with the step's metrics on log
        steps (hooks record in ``on_step_end``, loggers receive them in ``on_log``)."""
        self._recorded[name] = value

    # ----------------------------------------------------------------- loop
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
        t = self.cfg.train
        for micro_step in range(t.grad_accum):
            t0 = time.perf_counter()
            batch = self.source.micro_batch_at(micro_step)
            self._data_wait += time.perf_counter() - t0
            batch = self.hooks.on_batch(self, batch)
            offset = self.source.consumed + (micro_step * self.world_size + self.rank) * t.micro_batch
            torch.manual_seed(micro_batch_seed(self.cfg.run.seed, offset))
            loss = self.forward_loss(batch)
            # DeepSpeed scales the loss by 1/grad_accum in backward() and wants step() after every
            # micro-step: it only updates the weights (and steps the LR schedule) at the
            # accumulation boundary, and skips the gradient all-reduce before it.
            self.engine.backward(loss)
            self.engine.step()
        self.source.advance()
        self.step += 1
        self._recorded = {}
        self.hooks.on_step_end(self)
        if self.step % self.cfg.log.log_every == 0 or self.step == t.max_steps:
            elapsed = time.perf_counter() - self._window_start
            metrics = {"step": self.step, **self._log_metrics(elapsed, self._data_wait),
                       "lr": step_lr, **self._recorded}
            self._window_start, self._data_wait = time.perf_counter(), 0.0
            self.hooks.on_log(self, metrics)
        self.hooks.on_step_complete(self)
        self.checkpoint_requested = False

    def forward_loss(self, batch: dict) -> torch.Tensor:
        """Forward one micro-batch; returns the loss to backpropagate (hooks may replace it)."""
        out = self.kind.forward_loss(self.engine, batch, self.device)
        loss = self.hooks.on_loss(self, batch, out.logits, out.per_token, out.loss)
        self.meter.add(out.per_token, out.mask, batch["source"])
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
        """Close hooks (loggers, progress bars), the batch source and the engine; safe to call
        twice."""
        self.hooks.close()
        self.hooks = Hooks()
        if self.source is not None and not self._source_closed:
            self.source.close()
            self._source_closed = True
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            # Releases ZeRO-3's parameter hooks and prefetch state before the process group is
            # torn down (train.py), so no communication is left in flight at exit.
            engine.destroy()

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
        if self.changed_settings:
            log.info(f"changed plan applied from step {self.step}: "
                     f"{'; '.join(self.changed_settings)}")


def _float_or_none(value) -> float | None:
    if value is None:
        return None
    return float(value.item() if torch.is_tensor(value) else value)
