"""The run-kind interface: everything that differs between workflows, in one object.

A :class:`RunKind` is built from a config and owns, for its workflow, how the config is resolved
and checked (:meth:`RunKind.resolve`), the tokenizer, the batch source and its fingerprint, the
model, the loss and its metric mask (:meth:`RunKind.forward_loss`), and the hooks and
evaluators the run gets by default (:meth:`RunKind.hooks`).  The trainer builds these and runs
the loop; it has no workflow branch.  Adding a workflow means one module here plus its config
section.

:class:`CausalLMRun` holds what the two causal-LM kinds (``lm`` and ``graph_search``) share:
the tokenizer (``data.tokenizer``, else the built-in corpus's), the model (a preset or local
pretrained model, with ``model.init_from`` transfer and freezing) and the token losses.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from megaproc.config import Config
from megaproc.console_log import get_logger
from megaproc.data.default_corpus import default_corpus_paths, ensure_default_corpus
from megaproc.data.document_mask import (data_switch_keys,
                                         document_inputs)
from megaproc.errors import ConfigError
from megaproc.hooks import (CheckpointHook, EvalRunner, Evaluation, EvaluationHook, Hook,
                            LoggingHook, PreemptionHook, benchmark_evaluations,
                            validation_evaluation)
from megaproc.loss import training_loss, training_mask
from megaproc.models.presets import get_preset
from megaproc.models.run_model import build_run_model
from megaproc.models.sliced_head import (forward_logits, head_positions,
                                         sliced_token_cross_entropy)
from megaproc.models.transfer import write_transfer_report
from megaproc.tokenizer import load_tokenizer
from megaproc import distributed as dist_utils

log = get_logger(__name__)


@dataclass
class HookInputs:
    """The explicit pieces hooks are built from (never the trainer under construction)."""

    cfg: Config
    run_dir: Path
    tokenizer: Any
    source: Any
    valid_dataset: Any
    hf_config: Any
    device: torch.device
    rank: int
    world_size: int
    pad_id: int
    log: Callable[[str], None] = field(default=lambda message: None)


@dataclass
class StepLoss:
    """One micro-batch's forward: the loss to backpropagate, per-token (or per-sample) losses,
    the mask of the positions the logged loss averages over, and the logits."""

    loss: torch.Tensor
    per_token: torch.Tensor
    mask: torch.Tensor
    logits: torch.Tensor


class RunKind(abc.ABC):
    """Base class of the workflows (``megaproc/runs/*.py``)."""

    name: ClassVar[str] = "kind"

    def __init__(self, cfg: Config):
        self.cfg = cfg

    # ----------------------------------------------------------------- config
    def resolve(self, world_size: int, check_files: bool = True) -> None:
        """Fill derived values into ``self.cfg`` and refuse what this workflow cannot run."""

    def check_document_masking(self, check_files: bool = True) -> None:
        """Refuse ``data.reset_position_ids`` / ``reset_attention_mask`` / ``eod_mask_loss``:
        they split packed samples at EODs, and this workflow's rows are single examples."""
        if self.cfg.data.document_masking:
            raise ConfigError(f"config key {data_switch_keys(self.cfg.data)}: document "
                              f"masking applies to packed indexed data (an lm run), not to a "
                              f"{self.name} run")

    # ----------------------------------------------------------------- components
    @abc.abstractmethod
    def build_tokenizer(self):
        """The run's tokenizer."""

    @abc.abstractmethod
    def data_fingerprint(self, tokenizer) -> str:
        """Identity of the data the run trains on (a resume with other data is refused)."""

    @abc.abstractmethod
    def build_data(self, tokenizer, rank: int, world_size: int, pad_id: int, log_fn):
        """``(batch_source, validation_dataset_or_None)``."""

    @abc.abstractmethod
    def build_model(self, tokenizer, ds_config: dict, run_dir: Path, zero_stage: int):
        """The model to wrap in the DeepSpeed engine."""

    @abc.abstractmethod
    def forward_loss(self, engine, batch: dict, device) -> StepLoss:
        """Forward one micro-batch and compute its loss."""

    # ----------------------------------------------------------------- hooks
    def workflow_hooks(self, inputs: HookInputs) -> list[Hook]:
        """The hooks of this workflow (curriculum, classification metrics...)."""
        return []

    def workflow_evaluations(self, inputs: HookInputs) -> list[Evaluation]:
        """The evaluations of this workflow the evaluation hook runs (held-out task accuracy)."""
        return []

    def hooks(self, inputs: HookInputs) -> list[Hook]:
        """Every hook of the run: the workflow's, the one evaluation hook with the workflow's
        evaluations and the ones the config asks of any run (benchmarks, validation when there
        is a validation set), then logging, checkpointing and preemption."""
        cfg = inputs.cfg
        hooks = list(self.workflow_hooks(inputs))
        evaluations = list(self.workflow_evaluations(inputs))
        evaluations += benchmark_evaluations(cfg.eval, inputs.run_dir)
        validation = validation_evaluation(cfg, inputs.tokenizer, inputs.valid_dataset,
                                           inputs.world_size)
        if validation is not None:
            evaluations.append(validation)
        if evaluations:
            hooks.append(EvaluationHook(evaluations, eval_runner(inputs)))
        hooks += [LoggingHook(cfg.log, inputs.run_dir, cfg.train.max_steps),
                  CheckpointHook(cfg.checkpoint), PreemptionHook()]
        return hooks


def eval_runner(inputs: HookInputs) -> EvalRunner:
    """The runner of a run's evaluations (its run directory, tokenizer, rank, world size)."""
    return EvalRunner(inputs.run_dir, inputs.tokenizer, inputs.rank, inputs.world_size,
                      progress=inputs.cfg.log.progress)


# ----------------------------------------------------------------------------- causal LMs
def check_path(path: str | None, key: str, what: str, check_files: bool) -> None:
    """Refuse a configured file or directory that does not exist (one line naming the key)."""
    if check_files and path and not os.path.exists(os.path.expanduser(path)):
        raise ConfigError(f"config key '{key}': {what} not found: {path}")


def check_tokenizer_path(path: str | None, check_files: bool) -> None:
    """``data.tokenizer`` must exist unless it is a hub name (``org/name``, local cache only,
    checked when it is loaded)."""
    if not path or not check_files:
        return
    looks_local = str(path).startswith((".", "/", "~")) or str(path).count("/") > 1 \
        or str(path).endswith((".json", ".model"))
    if looks_local:
        check_path(path, "data.tokenizer", "tokenizer", check_files)


class CausalLMRun(RunKind):
    """What the ``lm`` and ``graph_search`` kinds share: tokenizer, model and token losses."""

    def resolve_tokenizer(self) -> None:
        """``data.tokenizer`` defaults to the built-in corpus's tokenizer (its cache path)."""
        data = self.cfg.data
        if not data.tokenizer:
            tokenizer_dir, _ = default_corpus_paths(data.default_vocab_size)
            data.tokenizer = str(tokenizer_dir)

    def check_model_name(self) -> None:
        """``model.name`` must be a preset unless ``model.pretrained_path`` is given."""
        model = self.cfg.model
        if model.pretrained_path:
            return
        try:
            get_preset(model.name)
        except ValueError as exc:
            raise ConfigError(f"config key 'model.name': {exc}") from None

    def uses_builtin_tokenizer(self) -> bool:
        """True when ``data.tokenizer`` is the built-in corpus's (built on first use)."""
        tokenizer_dir, _ = default_corpus_paths(self.cfg.data.default_vocab_size)
        return Path(self.cfg.data.tokenizer or "") == tokenizer_dir

    def build_tokenizer(self):
        """``data.tokenizer``; the built-in corpus (and its tokenizer) is built on first use."""
        if self.uses_builtin_tokenizer():
            ensure_default_corpus(self.cfg.data.default_vocab_size, log=log.info)
        return load_tokenizer(self.cfg.data.tokenizer)

    def build_model(self, tokenizer, ds_config: dict, run_dir: Path, zero_stage: int):
        """The HF causal LM with ``model.init_from`` transfer and freezing; the transfer
        summary goes to ``RUN_DIR/transfer.json``."""
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist_utils.world_size()))
        model, report = build_run_model(self.cfg.model, tokenizer, ds_config, zero_stage,
                                        local_world)
        if report is not None and dist_utils.is_main():
            log.info(write_transfer_report(Path(run_dir) / "transfer.json", report))
        return model

    def forward_loss(self, engine, batch: dict, device) -> StepLoss:
        """Next-token losses (``train.loss``: mean, weighted, answer_only, answer_word).

        A batch with document masking (``data.reset_position_ids`` / ``reset_attention_mask``)
        carries its position and document ids to the model; ``data.eod_mask_loss`` already
        ignored the labels of EOD inputs (:mod:`megaproc.data.document_mask`).
        With ``train.sliced_head`` the LM head runs only where the loss and the correctness
        check read (:func:`~megaproc.models.sliced_head.head_positions`); hooks then get [N, V]
        logits at ``batch["head_positions"]``, and the losses equal the full head's.
        """
        t = self.cfg.train
        kind = t.loss
        labels = batch["labels"].to(device)
        answer = batch["answer_mask"].to(device)
        example_id, primary, word = batch.get("example_id"), batch.get("primary"), \
            batch.get("word_mask")
        positions = head_positions(kind, labels, answer, word, batch.get("boundary_mask")) \
            if t.sliced_head else None
        if positions is not None:
            batch["head_positions"] = positions
        logits = forward_logits(engine, batch["input_ids"].to(device),
                                batch["attention_mask"].to(device), positions,
                                **document_inputs(batch, device))
        per_token = sliced_token_cross_entropy(logits, labels, positions)
        loss = training_loss(kind, per_token, labels, answer, example_id, primary, word)
        mask = training_mask(kind, labels, answer, primary, word)
        return StepLoss(loss, per_token, mask, logits)
