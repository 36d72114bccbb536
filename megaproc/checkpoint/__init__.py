"""Checkpoints: the :class:`Checkpointer` (save, find, check, load) and a checkpoint's model.

- :mod:`megaproc.checkpoint.layout`: directories on disk, discovery, crash-safe publication;
- :mod:`megaproc.checkpoint.checkpointer`: what a checkpoint holds and the resume rules;
- :mod:`megaproc.checkpoint.model`: the model of a checkpoint for export, evaluation and
  ``model.init_from``.
"""

from megaproc.checkpoint.checkpointer import RESUME_CRITICAL, Checkpointer
from megaproc.checkpoint.layout import (ResumeError, complete_checkpoints, latest_checkpoint,
                                        read_trainer_state, resolve_checkpoint_ref, step_dir_name)
from megaproc.checkpoint.model import (CheckpointError, check_checkpoint_dir, load_checkpoint_model,
                                       load_checkpoint_state_dict, load_checkpoint_tokenizer)

__all__ = ["RESUME_CRITICAL", "CheckpointError", "Checkpointer", "ResumeError",
           "check_checkpoint_dir", "complete_checkpoints", "latest_checkpoint",
           "load_checkpoint_model", "load_checkpoint_state_dict", "load_checkpoint_tokenizer",
           "read_trainer_state", "resolve_checkpoint_ref", "step_dir_name"]
