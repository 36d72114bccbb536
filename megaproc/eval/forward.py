"""The model side of every evaluator: "score these token batches", and the eval-mode switch.

:class:`ModelForward` wraps a HuggingFace causal LM or a DeepSpeed engine wrapping one (any
ZeRO stage: the engine forwards keyword arguments to its module) as ``forward(input_ids,
attention_mask, position_ids=None) -> logits``.  Besides 2-D padding masks it takes the 4-D
block masks of the packed log-likelihood scorer (:mod:`megaproc.eval.packing`).  How
transformers 5 treats them (``masking_utils.create_causal_mask``): a 4-D mask is returned
as it is, without adding causality or padding, and reaches the attention function unchanged.
``sdpa`` hands it to ``torch.nn.functional.scaled_dot_product_attention`` (a boolean mask, True
= may attend); ``eager`` *adds* it to the attention scores, so it must be an additive float
mask (0 or the dtype's minimum).  Flash-attention and flex kernels take no such mask, and a
sliding-window config would be ignored by a custom mask: for those the packed scorer is off and
every continuation gets its own row.  Those rules, and the document masking of packed windows
(``document_ids``), live in :mod:`megaproc.models.document_attention`, shared with training.

:func:`eval_mode` is the one switch from training to evaluation mode (dropout off) and back.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from megaproc.models.document_attention import kernel_mask, model_inputs, supports_block_mask
from megaproc.models.sliced_head import forward_logits

DEFAULT_MAX_LENGTH = 2048  # lm-eval's default when the model config names no context length

LogitsFn = Callable[..., torch.Tensor]


def unwrap(model):
    """The HF module inside a DeepSpeed engine (or DDP wrapper); the model itself otherwise."""
    return getattr(model, "module", model)


def context_length(model) -> int:
    """The model's maximum sequence length (``n_positions``, ``max_position_embeddings`` or
    ``n_ctx`` of its config, else 2048 as in lm-eval); accepts an engine or a bare config
    holder."""
    config = getattr(unwrap(model), "config", None)
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None)
        if value:
            return int(value)
    return DEFAULT_MAX_LENGTH


class ModelForward:
    """``forward(input_ids, attention_mask, position_ids=None) -> logits`` of a HF causal LM or
    of a DeepSpeed engine wrapping one.

    ``use_cache=False``: without it every forward of a HF model builds a key/value cache
    (a ``torch.cat`` per layer) that scoring never reads.  ``supports_block_mask`` says
    whether 4-D block masks work (see the module docstring); :meth:`block_mask` turns a
    boolean ``[B, T, T]`` "may attend" tensor into the mask the attention kernel expects.
    """

    def __init__(self, model):
        self.model = model
        module = unwrap(model)
        config = getattr(module, "config", None)
        self.attn_implementation = getattr(config, "_attn_implementation", None)
        parameter = next(iter(module.parameters()), None)
        self.dtype = parameter.dtype if parameter is not None else torch.float32
        self.supports_block_mask = supports_block_mask(config)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor | None = None,
                 document_ids: torch.Tensor | None = None) -> torch.Tensor:
        inputs = model_inputs(self.model, input_ids, attention_mask, position_ids, document_ids)
        return inputs.logits(self.model(**inputs.kwargs, use_cache=False).logits)

    def logits_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  positions: torch.Tensor, position_ids: torch.Tensor | None = None,
                  document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[N, V]`` at the ``True`` positions of ``positions`` ``[B, T]`` only (the LM
        head runs there alone: :func:`megaproc.models.sliced_head.forward_logits`)."""
        return forward_logits(self.model, input_ids, attention_mask, positions, position_ids,
                              document_ids)

    def block_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """``[B, 1, T, T]`` mask from a boolean ``[B, T, T]`` (query, key) "may attend" tensor:
        boolean for sdpa, additive (0 / dtype minimum) for eager attention."""
        return kernel_mask(allowed, self.attn_implementation, self.dtype)


def hf_logits_fn(model) -> ModelForward:
    """``logits_fn`` running a HF causal LM or a DeepSpeed engine wrapping one."""
    return model if isinstance(model, ModelForward) else ModelForward(model)


@contextmanager
def eval_mode(model) -> Iterator:
    """Evaluation mode (dropout off) for the block, then every submodule back in the mode it
    was in (a module or a DeepSpeed engine; partly frozen models keep their mix of modes)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
