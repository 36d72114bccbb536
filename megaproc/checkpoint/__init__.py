"""Checkpoints: the :class:`Checkpointer` (save, find, check, load) and a checkpoint's model.

- :mod:`megaproc.checkpoint.layout`: directories on disk, discovery, crash-safe publication;
- :mod:`megaproc.checkpoint.checkpointer`: what a checkpoint holds and the resume rules;
- :mod:`megaproc.checkpoint.manifest`: every file's size and hash, and the checks
  (``python -m megaproc.checkpoint verify DIR``);
- :mod:`megaproc.checkpoint.writes`: a save's writes per rank, and a failed save as one line;
- :mod:`megaproc.checkpoint.model`: the model of a checkpoint for export, evaluation and
  ``model.init_from``.

Modules of the package import each other directly, never through this file.
"""

from megaproc.checkpoint.checkpointer import RESUME_CRITICAL, Checkpointer
from megaproc.checkpoint.layout import (ResumeError, complete_checkpoints, latest_checkpoint,
                                        read_trainer_state, resolve_checkpoint_ref, step_dir_name)
from megaproc.checkpoint.manifest import ManifestError, read_manifest
from megaproc.checkpoint.model import (CheckpointError, check_checkpoint_dir,
                                       load_checkpoint_model, load_checkpoint_state_dict,
                                       load_checkpoint_tokenizer)
from megaproc.checkpoint.writes import SAVE_FAILED_EXIT_CODE, CheckpointSaveError

__all__ = ["RESUME_CRITICAL", "SAVE_FAILED_EXIT_CODE", "CheckpointError", "CheckpointSaveError",
           "Checkpointer", "ManifestError", "ResumeError", "check_checkpoint_dir",
           "complete_checkpoints", "latest_checkpoint", "load_checkpoint_model",
           "load_checkpoint_state_dict", "load_checkpoint_tokenizer", "read_manifest",
           "read_trainer_state", "resolve_checkpoint_ref", "step_dir_name"]
