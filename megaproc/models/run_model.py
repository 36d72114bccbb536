"""The model of a training run: the preset or pretrained model, optionally initialised from
another run's checkpoint (``model.init_from``), optionally built under ZeRO-3 ``zero.Init``."""

from __future__ import annotations

import os

import psutil
from transformers import AutoConfig

from megaproc.console_log import get_logger
from megaproc.models.factory import build_model, count_parameters, model_config
from megaproc.models.transfer import freeze_weights, transfer_report, transfer_weights

log = get_logger(__name__)


def token_ids(tokenizer) -> dict:
    """The special-token ids a fresh model config gets from the run's tokenizer."""
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def wants_zero3_init(model_cfg, vocab_size: int, local_world_size: int, host_memory: int) -> bool:
    """Whether to construct the model under ``zero.Init`` (see ``model.zero3_init``): ``auto``
    does so when the fp32 model of every local rank would not fit in a quarter of host memory."""
    if model_cfg.zero3_init != "auto":
        return model_cfg.zero3_init == "always"
    if model_cfg.pretrained_path:
        config = AutoConfig.from_pretrained(model_cfg.pretrained_path, local_files_only=True)
    else:
        config = model_config(model_cfg.name, vocab_size, model_cfg.config_overrides,
                              model_cfg.max_position_embeddings)
    return count_parameters(config) * 4 * local_world_size > host_memory / 4


def build_run_model(model_cfg, tokenizer, ds_config: dict, zero_stage: int,
                    local_world_size: int):
    """``(model, transfer_report_or_None)``: the HF causal LM for a run, with weight groups from
    ``model.init_from`` and parameters outside ``model.weights_to_train`` frozen."""
    vocab = len(tokenizer)
    zero3 = (zero_stage == 3 and not model_cfg.init_from
             and wants_zero3_init(model_cfg, vocab, local_world_size,
                                  psutil.virtual_memory().total))
    model = build_model(model_cfg, vocab_size=vocab, zero3_init=zero3, ds_config=ds_config,
                        **token_ids(tokenizer))

    copied = transfer_weights(model, model_cfg, tokenizer) if model_cfg.init_from else {}
    freeze_weights(model, model_cfg.weights_to_train)
    report = None
    if model_cfg.init_from or "everything" not in model_cfg.weights_to_train:
        report = transfer_report(model, copied)
    if model_cfg.gradient_checkpointing:
        # HF disables the KV cache with checkpointing; use_reentrant=False works with frozen
        # inputs (embeddings not trained) where the reentrant variant drops gradients.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if os.environ.get("MEGAPROC_DEBUG_MODEL"):
        log.info(str(model))
    return model, report
