"""The Trainer: model, DeepSpeed engine, data and hooks around a short train loop."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from megaproc import checkpoint as ckpt
from megaproc import distributed as dist_utils
from megaproc.config import Config, fingerprint, to_dict, to_yaml
from megaproc.data.batch import IGNORE_INDEX
from megaproc.engine import build_ds_config, build_engine
from megaproc.hooks.base import Hook
from megaproc.metrics import LossMeter


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def flat_config(cfg: Config) -> dict:
    """The experiment-defining config as ``{"a.b": value}`` (paths and logging left out)."""
    out = {}
    for section, values in to_dict(cfg).items():
        if section in ("run", "log", "checkpoint", "eval") or not isinstance(values, dict):
            continue
        for key, value in values.items():
            out[f"{section}.{key}"] = value
    out.pop("train.max_steps", None)
    out["run.seed"] = cfg.run.seed
    return out


class Trainer:
    """Builds everything from a :class:`Config` and runs the loop."""

    def __init__(self, cfg: Config, extra_hooks: list[Hook] | None = None):
        from megaproc.components import (build_data, build_hooks, build_model_for_run,
                                          data_fingerprint, load_run_tokenizer)

        self.cfg = cfg
        self.run_dir = Path(cfg.run.out_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.rank, self.world_size = dist_utils.rank(), dist_utils.world_size()
        self.device = dist_utils.device()
        self.step = 0
        self.finished = False
        self.exit_code = 0
        self.last_saved_step = -1
        self.config_dict = to_dict(cfg)

        resume_from = self._find_resume()
        self.tokenizer = load_run_tokenizer(cfg)
        self.data_fingerprint = data_fingerprint(cfg)
        if resume_from is not None:  # refuse a bad resume before the run dir or engine is touched
            self._check_resume(resume_from)
        self.source, self.valid_dataset, self.source_names = build_data(self)
        self._prepare_run_dir(resume_from)
        seed_everything(cfg.run.seed)
        self.ds_config = build_ds_config(cfg, self.world_size)
        model = build_model_for_run(cfg, self.tokenizer, self.ds_config)
        self.hf_config = model.config
        self.engine = build_engine(cfg, model, self.ds_config)
        # Dropout streams differ per rank; resumes restore them from the checkpoint.
        seed_everything(cfg.run.seed + 1000003 * (self.rank + 1))
        self.meter = LossMeter(len(self.source_names), self.device)
        self.hooks: list[Hook] = build_hooks(self) + list(extra_hooks or [])
        if resume_from is not None:
            self.load_checkpoint(resume_from)

    # ----------------------------------------------------------------- set-up
    def _find_resume(self) -> Path | None:
        ref = self.cfg.checkpoint.resume
        if ref == "none":
            return None
        if ref == "auto":
            return ckpt.latest_checkpoint(self.ckpt_root)
        return ckpt.resolve_checkpoint_ref(ref)

    def _prepare_run_dir(self, resume_from: Path | None) -> None:
        """Refuse to overwrite a finished run; write the resolved config before step 0."""
        existing = ckpt.complete_checkpoints(self.ckpt_root)
        if resume_from is None and existing:
            raise ckpt.ResumeError(
                f"run.out_dir {self.run_dir} already holds checkpoints; resume with "
                "checkpoint.resume=auto or choose a new run.out_dir")
        logs = self.run_dir / "logs"
        if resume_from is None and (logs / "train.jsonl").is_file():
            if self.cfg.checkpoint.resume != "auto":
                raise ckpt.ResumeError(f"run.out_dir {self.run_dir} already holds logs of another "
                                       "run; choose a new run.out_dir")
        dist_utils.barrier()  # every rank has looked before rank 0 moves anything
        if dist_utils.is_main():
            if resume_from is None and (logs / "train.jsonl").is_file():
                # A job restarted before its first checkpoint: start over, keep the old logs.
                kept = self.run_dir / f"logs.before_restart_{time.strftime('%Y%m%d-%H%M%S')}"
                logs.rename(kept)
                print(f"[megaproc] no checkpoint to resume; previous logs moved to {kept}", flush=True)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temporaries(self.ckpt_root)
            path = self.run_dir / "config.yaml"
            text = to_yaml(self.cfg)
            if path.is_file() and path.read_text() != text:
                path.rename(self.run_dir / f"config.before_step{self._resume_step(resume_from)}.yaml")
            path.write_text(text)
        dist_utils.barrier()

    @staticmethod
    def _resume_step(resume_from: Path | None) -> int:
        return ckpt.read_trainer_state(resume_from)["step"] if resume_from else 0

    # ----------------------------------------------------------------- loop
    def train(self) -> int:
        """Run until ``train.max_steps`` or a hook stops; returns the process exit code."""
        self.engine.train()
        for hook in self.hooks:
            hook.on_train_start(self)
        window_start, window_data_wait = time.perf_counter(), 0.0
        while self.step < self.cfg.train.max_steps and not self.finished:
            step_lr = self.engine.get_lr()[0]
            for micro_step in range(self.cfg.train.grad_accum):
                t0 = time.perf_counter()
                batch = self.source.micro_batch_at(micro_step)
                window_data_wait += time.perf_counter() - t0
                for hook in self.hooks:
                    batch = hook.on_batch(self, batch)
                loss = self.forward_loss(batch)
                self.engine.backward(loss)
                self.engine.step()
            self.source.advance()
            self.step += 1
            metrics = {"step": self.step}
            if self.step % self.cfg.log.log_every == 0 or self.step == self.cfg.train.max_steps:
                elapsed = time.perf_counter() - window_start
                metrics.update(self._log_metrics(elapsed, window_data_wait), lr=step_lr)
                window_start, window_data_wait = time.perf_counter(), 0.0
            for hook in self.hooks:
                hook.on_step_end(self, metrics)
            if any(hook.should_stop() for hook in self.hooks):
                self.finished = True
        for hook in reversed(self.hooks):  # teardown: final save/eval before the loggers close
            hook.on_train_end(self)
        self.source.close()
        return self.exit_code

    def forward_loss(self, batch: dict) -> torch.Tensor:
        """Forward one micro-batch; returns the loss to backpropagate (hooks may reweight it)."""
        input_ids = batch["input_ids"].to(self.device)
        labels = batch["labels"].to(self.device)
        out = self.engine(input_ids=input_ids, attention_mask=batch["attention_mask"].to(self.device))
        logits = out.logits
        per_token = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                                    ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)
        mask = labels != IGNORE_INDEX
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
        for hook in self.hooks:
            loss = hook.on_loss(self, batch, logits, per_token, loss)
        self.meter.add(per_token, mask, batch["source"])
        return loss

    def _log_metrics(self, elapsed: float, data_wait: float) -> dict:
        """Reduce the meters over ranks (collective) into the train.jsonl fields."""
        reduced = self.meter.reduce()
        metrics = {
            "loss": reduced["loss"],
            "lr": self.engine.get_lr()[0],
            "tokens": reduced["total_tokens"],
            "samples": self.source.consumed,
            "tokens_per_s": reduced["tokens"] / max(elapsed, 1e-9),
            "grad_norm": _float_or_none(self.engine.get_global_grad_norm()),
            "data_wait_frac": data_wait / max(elapsed, 1e-9),
        }
        for name, value in zip(self.source_names, reduced["per_source"]):
            if value is not None:
                metrics[f"loss/{name}"] = value
        return metrics

    # ----------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """Validation loss, perplexity and token accuracy over ``eval.max_batches`` batches."""
        if self.valid_dataset is None:
            return None
        from megaproc.data.batch import collate, rank_sample_indices

        micro, world = self.cfg.train.micro_batch, self.world_size
        batches = min(self.cfg.eval.max_batches, len(self.valid_dataset) // (micro * world))
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.engine.eval()
        for b in range(batches):
            indices = rank_sample_indices(0, b, micro, world, self.rank)
            batch = collate([self.valid_dataset[int(i)] for i in indices], self.pad_id,
                            pad_to=self.cfg.train.seq_len + 1)
            labels = batch["labels"].to(self.device)
            logits = self.engine(input_ids=batch["input_ids"].to(self.device),
                                 attention_mask=batch["attention_mask"].to(self.device)).logits
            mask = labels != IGNORE_INDEX
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="sum")
            sums[0] += loss.double()
            sums[1] += mask.sum()
            sums[2] += ((logits.argmax(-1) == labels) & mask).sum()
        self.engine.train()
        dist_utils.all_reduce_sum(sums)
        tokens = max(sums[1].item(), 1.0)
        val_loss = sums[0].item() / tokens
        return {"val_loss": val_loss, "val_ppl": float(np.exp(min(val_loss, 50.0))),
                "val_token_acc": sums[2].item() / tokens, "num_tokens": int(sums[1].item())}

    @property
    def pad_id(self) -> int:
        """Padding id of the run's tokenizer."""
        from megaproc.tokenizer import pad_id

        return pad_id(self.tokenizer)

    # ----------------------------------------------------------------- checkpoints
    def geometry(self) -> dict:
        """Batch settings a resume must keep."""
        t = self.cfg.train
        return {"train.micro_batch": t.micro_batch, "train.grad_accum": t.grad_accum,
                "world_size": self.world_size, "train.seq_len": t.seq_len,
                "data_fingerprint": self.data_fingerprint}

    def trainer_state(self) -> dict:
        """Everything besides the engine that a resume needs."""
        return {
            "consumed_samples": self.source.consumed,
            "consumed_per_source": dict(zip(self.source_names, self.source.consumed_per_source()))
            if hasattr(self.source, "consumed_per_source") else {},
            "tokens": self.meter.total_tokens(),
            "data": self.source.state_dict(),
            "hooks": {hook.name: hook.state_dict() for hook in self.hooks},
            "geometry": self.geometry(),
            "config_fingerprint": fingerprint(self.cfg),
            "config": flat_config(self.cfg),
        }

    def save_checkpoint(self) -> Path | None:
        """Save the checkpoint for the current step (collective)."""
        if self.last_saved_step == self.step:
            return None
        path = ckpt.save_checkpoint(self.engine, self.ckpt_root, self.step, self.trainer_state(),
                                    self.hf_config, self.tokenizer, self.cfg.checkpoint.keep_last_k)
        for hook in self.hooks:
            hook.on_save(self, str(path))
        self.last_saved_step = self.step
        return path

    def _check_resume(self, path: Path) -> None:
        """Refuse a resume with changed batch settings; report other changed settings."""
        state = ckpt.read_trainer_state(path)
        changed = ckpt.check_resume_compatible(state, {"geometry": self.geometry(),
                                                       "config": flat_config(self.cfg)})
        if changed and dist_utils.is_main():
            print(f"[megaproc] resuming with changed settings: {', '.join(changed)}", flush=True)

    def load_checkpoint(self, path: Path) -> None:
        """Resume engine, loader, hooks and RNG from ``path``."""
        state = ckpt.read_trainer_state(path)
        load_path, _ = self.engine.load_checkpoint(str(path), tag="ds")
        if load_path is None:
            raise ckpt.ResumeError(f"DeepSpeed could not load the engine state in {path}")
        self.step = int(state["step"])
        self.last_saved_step = self.step
        self.meter.restore_total_tokens(int(state.get("tokens", 0)))
        self.source.load_state_dict(state["data"])
        for hook in self.hooks:
            if hook.name in state.get("hooks", {}):
                hook.load_state_dict(state["hooks"][hook.name])
            hook.on_load(self, str(path))
        ckpt.load_rng(path)
        if dist_utils.is_main():
            print(f"[megaproc] resumed from {path} at step {self.step}", flush=True)


def _float_or_none(value) -> float | None:
    if value is None:
        return None
    return float(value.item() if torch.is_tensor(value) else value)

