"""Logging hook: logs/train.jsonl always, a rank-0 progress bar, optional TensorBoard and wandb."""

from __future__ import annotations

import time
from pathlib import Path

from megaproc import distributed as dist_utils
from megaproc.console_log import get_logger
from megaproc.hooks.base import Hook
from megaproc.hooks.records import JsonlWriter, drop_records_after
from megaproc.plot import plot_run

log = get_logger(__name__)


class LoggingHook(Hook):
    """Writes the step metrics the trainer reduced on log steps."""

    name = "logging"
    priority = 60

    def __init__(self, log_cfg, run_dir: Path, max_steps: int):
        self.cfg = log_cfg
        self.run_dir = Path(run_dir)
        self.max_steps = max_steps
        self.writer = None
        self.progress = None
        self.tensorboard = None
        self.wandb_run = None

    def on_train_start(self, trainer) -> None:
        if not dist_utils.is_main():
            return
        drop_records_after(self.run_dir / "logs" / "train.jsonl", trainer.step)
        self.writer = JsonlWriter(self.run_dir / "logs" / "train.jsonl")
        if self.cfg.progress:
            from tqdm.auto import tqdm

            self.progress = tqdm(total=self.max_steps, initial=trainer.step, desc="train",
                                 unit="step", dynamic_ncols=True, mininterval=1.0)
        if self.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))
        if self.cfg.wandb and self.cfg.wandb_mode != "disabled":
            import wandb  # optional (megaproc[logging]); resolve() refuses the config without it

            self.wandb_run = wandb.init(project=self.cfg.wandb_project, mode=self.cfg.wandb_mode,
                                        dir=str(self.run_dir), name=self.run_dir.name,
                                        config=trainer.config_dict, resume="allow")

    def on_step_end(self, trainer) -> None:
        if self.progress is not None:
            self.progress.update(trainer.step - self.progress.n)

    def on_log(self, trainer, metrics: dict) -> None:
        if not dist_utils.is_main():
            return
        record = dict(metrics, timestamp=time.time())
        self.writer.write(record)
        if self.progress is not None:
            self.progress.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                                      refresh=False)
        self._emit_scalars("train", metrics)

    def on_eval(self, trainer, metrics: dict) -> None:
        if dist_utils.is_main():
            self._emit_scalars("eval", metrics)

    def _emit_scalars(self, group: str, metrics: dict) -> None:
        """Send the numeric entries of ``metrics`` to TensorBoard and wandb, when enabled."""
        scalars = {f"{group}/{k}": v for k, v in metrics.items()
                   if isinstance(v, (int, float)) and k != "step"}
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, metrics["step"])
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=metrics["step"])

    def on_train_end(self, trainer) -> None:
        if self.cfg.plot_at_end and dist_utils.is_main():
            written = plot_run(self.run_dir)
            log.info(f"wrote {len(written)} plots to {written[0].parent if written else self.run_dir}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.writer is not None:
            self.writer.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        self.progress = self.writer = self.tensorboard = self.wandb_run = None
