"""How the documents of a packed batch reach each model family's attention.

A batch with document masking (:mod:`megaproc.data.document_mask`) carries ``document_ids``
[B, T] (``data.reset_attention_mask``: no attention across an EOD) and/or ``position_ids``
[B, T] (``data.reset_position_ids``).  :func:`model_inputs` turns them into the keyword
arguments of a HF causal LM of the families megaproc builds (GPT-2, GPT-NeoX/Pythia, Llama,
Qwen3), by the model's attention implementation (``config._attn_implementation``):

``sdpa`` / ``eager``: a block-diagonal causal 4-D mask [B, 1, T, T]
    transformers 5 (``masking_utils.create_causal_mask`` -> ``_preprocess_mask_arguments``)
    returns a 4-D ``attention_mask`` as it is, adding neither causality nor padding, so the
    mask holds both: a query sees the keys at or before it in its own document; pads are one
    segment of their own (no row of the attention is empty, which would give NaN).  ``sdpa``
    hands the mask to ``torch.nn.functional.scaled_dot_product_attention``, which reads a
    *boolean* mask as "may attend"; ``eager`` *adds* the mask to the attention scores, so it
    gets an additive float mask (0 / the dtype's minimum) (:func:`kernel_mask`).  Position ids
    go in as ``position_ids`` (GPT-2's learned position embeddings, the rotary embeddings of
    the others).  A custom 4-D mask replaces a sliding window's, and flex attention takes no
    tensor mask: those are refused (:func:`document_attention_problem`).
``flash_attention_2`` / ``_3`` (CUDA): no mask, HF's padding-free path
    The batch is flattened into one row [1, B*T] with its ``position_ids`` and the sequence
    boundaries given as ``cu_seq_lens_q/k`` and ``max_length_q/k`` (``FlashAttentionKwargs``,
    which every family's forward passes down to ``_flash_attention_forward``; with them it
    calls ``flash_attn_varlen_func`` and never looks at a mask).  Each row, each of its
    documents (with ``reset_attention_mask``) and its padding is one sequence.  The boundaries
    are explicit because HF infers them from position ids only for a batch of one row and only
    where positions restart: that would tie ``reset_attention_mask`` to ``reset_position_ids``
    (Megatron keeps them independent) and would make a one-row batch with reset positions
    attend per document.  Logits come back as [B, T, V] (:meth:`ModelInputs.logits`), and the
    sliced head's positions are flattened alike (:meth:`ModelInputs.keep`).

Without document ids and position ids the model gets exactly the ``input_ids`` and
``attention_mask`` it got before (no mask is built for runs without the switches).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils.generic import is_flash_attention_requested

BLOCK_MASK_IMPLEMENTATIONS = ("sdpa", "eager")
# The families whose forward takes position ids and a custom 4-D mask as described above
# (checked against the transformers 5.24 sources and by tests/models/test_document_attention.py).
DOCUMENT_MODEL_TYPES = ("gpt2", "gpt_neox", "llama", "qwen3")
ROW_SEGMENT, PAD_SEGMENT = 0, -1


def uses_sliding_window(config) -> bool:
    """Whether the config's attention uses a sliding window (which a custom 4-D mask drops)."""
    if getattr(config, "use_sliding_window", None) is False:
        return False
    return bool(getattr(config, "sliding_window", None))


def supports_block_mask(config) -> bool:
    """Whether the model takes custom 4-D masks (sdpa or eager attention, no sliding window)."""
    return (getattr(config, "_attn_implementation", None) in BLOCK_MASK_IMPLEMENTATIONS
            and not uses_sliding_window(config))


def is_padding_free(attn_implementation: str | None) -> bool:
    """Whether the attention kernel is a flash-attention flavour (packed sequences, no mask)."""
    return bool(attn_implementation) and is_flash_attention_requested(
        requested_attention_implementation=attn_implementation)


def document_attention_problem(config, reset_attention_mask: bool) -> str | None:
    """Why a model of ``config`` cannot take document masking, or None when it can."""
    model_type = getattr(config, "model_type", None)
    if model_type not in DOCUMENT_MODEL_TYPES:
        return (f"document masking supports the model types {', '.join(DOCUMENT_MODEL_TYPES)}, "
                f"not {model_type!r}")
    implementation = getattr(config, "_attn_implementation", None)
    if not reset_attention_mask or is_padding_free(implementation) or supports_block_mask(config):
        return None
    if uses_sliding_window(config):
        return "a block mask would replace the model's sliding-window attention"
    return (f"attention {implementation!r} takes no block mask; use sdpa, eager or "
            "flash_attention_2 (model.config_overrides: attn_implementation=...)")


def kernel_mask(allowed: torch.Tensor, attn_implementation: str | None,
                dtype: torch.dtype) -> torch.Tensor:
    """``[B, 1, T, T]`` mask from a boolean ``[B, T, T]`` (query, key) "may attend" tensor:
    boolean for sdpa, additive (0 / dtype minimum) for eager attention."""
    mask = allowed[:, None, :, :]
    if attn_implementation == "eager":
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return additive.masked_fill_(~mask, torch.finfo(dtype).min)
    return mask


def block_causal_attention(segments: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, T, T]`` (query, key) "may attend": causal, within the query's segment."""
    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    return causal & (segments[:, :, None] == segments[:, None, :])


def sequence_segments(attention_mask: torch.Tensor,
                      document_ids: torch.Tensor | None) -> torch.Tensor:
    """The segment of every position: its document (``document_ids``) or its row's content,
    and :data:`PAD_SEGMENT` on padding."""
    valid = attention_mask.bool()
    if document_ids is None:
        return torch.where(valid, ROW_SEGMENT, PAD_SEGMENT)
    return document_ids.masked_fill(~valid, PAD_SEGMENT)


def varlen_kwargs(segments: torch.Tensor) -> dict:
    """Flash attention's packed-sequence arguments for the batch flattened into one row:
    ``cu_seq_lens_q/k`` (int32 offsets where a row or a segment starts, then the total) and
    ``max_length_q/k`` (the longest sequence)."""
    width = segments.shape[1]
    flat = segments.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    starts[::width] = True  # a row never continues the previous one
    total = torch.tensor([flat.numel()], device=flat.device)
    offsets = torch.cat([starts.nonzero().flatten(), total]).to(torch.int32)
    longest = int((offsets[1:] - offsets[:-1]).max())
    return {"cu_seq_lens_q": offsets, "cu_seq_lens_k": offsets,
            "max_length_q": longest, "max_length_k": longest}


@dataclass
class ModelInputs:
    """Keyword arguments for the model's forward; ``shape`` is the batch's [B, T] when it was
    flattened into one row (flash attention), None otherwise."""

    kwargs: dict
    shape: tuple[int, int] | None = None

    def keep(self, positions: torch.Tensor) -> torch.Tensor:
        """The sliced head's bool positions [B, T] in the layout the model sees."""
        return positions if self.shape is None else positions.reshape(1, -1)

    def logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] (or the sliced [N, V], unchanged) from the model's output."""
        if self.shape is None or logits.dim() == 2:
            return logits
        return logits.reshape(*self.shape, logits.size(-1))


def model_inputs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor | None = None,
                 document_ids: torch.Tensor | None = None) -> ModelInputs:
    """The forward arguments of ``model`` (a HF causal LM or an engine around one) for a batch
    with optional ``position_ids`` and ``document_ids`` [B, T] (see the module docstring)."""
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if position_ids is None and document_ids is None:
        return ModelInputs(kwargs)
    module = getattr(model, "module", model)  # the HF model inside a DeepSpeed engine
    implementation = module.config._attn_implementation
    device = input_ids.device
    if is_padding_free(implementation):
        rows, width = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(width, device=device).expand(rows, width)
        packed = varlen_kwargs(sequence_segments(attention_mask, document_ids).to(device))
        return ModelInputs({"input_ids": input_ids.reshape(1, -1), "attention_mask": None,
                            "position_ids": position_ids.to(device).reshape(1, -1), **packed},
                           (rows, width))
    if position_ids is not None:
        kwargs["position_ids"] = position_ids.to(device)
    if document_ids is not None:
        segments = sequence_segments(attention_mask, document_ids.to(device))
        parameter = next(module.parameters(), None)
        dtype = parameter.dtype if parameter is not None else torch.float32
        kwargs["attention_mask"] = kernel_mask(block_causal_attention(segments), implementation,
                                               dtype)
    return ModelInputs(kwargs)
