"""Helpers of the checkpoint tests: a stand-in for a DeepSpeed engine's save, and damage.

:class:`SavingEngine` writes the way ``DeepSpeedEngine.save_checkpoint`` (0.19.8) does --
directories and state files through ``self.checkpoint_engine`` (DeepSpeed's real
``TorchCheckpointEngine``), the recovery script through ``self._copy_recovery_script``, the
``latest`` file with a plain ``open`` -- so the Checkpointer's save runs in one process without
building a model.  The 2-rank tests in ``test_recovery_launch.py`` use real engines.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from megaproc.checkpoint import Checkpointer


class SavingEngine:
    """Writes a small engine state like ``DeepSpeedEngine.save_checkpoint``."""

    def __init__(self, seed: int = 0):
        from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

        self.checkpoint_engine = TorchCheckpointEngine()
        self.checkpoint_engine.zipfile_serialization = True
        generator = torch.Generator().manual_seed(seed)
        self.weights = torch.randn(4096, generator=generator)

    def save_checkpoint(self, save_dir, tag, save_latest=True):
        tag_dir = os.path.join(save_dir, tag)
        self.checkpoint_engine.makedirs(save_dir, exist_ok=True)
        self.checkpoint_engine.makedirs(tag_dir, exist_ok=True)
        self.checkpoint_engine.save({"module": {"w": self.weights}},
                                    os.path.join(tag_dir, "mp_rank_00_model_states.pt"))
        optim_file = os.path.join(tag_dir, "zero_pp_rank_0_mp_rank_00_optim_states.pt")
        self.checkpoint_engine.save({"optimizer_state_dict": {"exp_avg": self.weights * 2}},
                                    optim_file)
        self._copy_recovery_script(save_dir)
        if save_latest:
            with open(os.path.join(save_dir, "latest"), "w") as fh:
                fh.write(tag)
        return True

    def _copy_recovery_script(self, save_path):
        Path(save_path, "zero_to_fp32.py").write_text("# recovery script\n" * 50)


class SavesPretrained:
    """A model config / tokenizer stand-in: ``save_pretrained(dir)`` writes one JSON file."""

    def __init__(self, name: str):
        self.name = name

    def save_pretrained(self, directory):
        os.makedirs(directory, exist_ok=True)
        Path(directory, f"{self.name}.json").write_text(json.dumps({"name": self.name}))


def save(checkpointer: Checkpointer, step: int, engine: SavingEngine | None = None) -> Path:
    """One checkpoint at ``step`` with a trainer state that a resume can read."""
    state = {"consumed_samples": step * 8, "geometry": {}, "settings": {}}
    return checkpointer.save(step, engine or SavingEngine(step), state,
                             SavesPretrained("config"), SavesPretrained("tokenizer"))


def truncate(path: Path) -> int:
    """Cut a file to half its size; returns the new size."""
    size = path.stat().st_size // 2
    with open(path, "r+b") as fh:
        fh.truncate(size)
    return size


def flip_byte(path: Path, offset: int = -100) -> None:
    """Change one byte of a file in place (same size, other content)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
