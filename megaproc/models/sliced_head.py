"""The LM head only at the positions a loss or a metric reads (``train.sliced_head``).

With ``train.loss: answer_word`` or ``answer_only`` a micro-batch trains a few positions per
sequence (the answer's tokens, the eos after them), and the metrics computed from the training
forward read a few more (the curriculum's correctness check reads ``word_mask`` and
``boundary_mask``, see :mod:`megaproc.eval.answer_correctness`); yet a plain forward projects
every position onto the vocabulary, ``[B, T, V]`` logits of which all but ``N`` rows are
thrown away.  Here the model computes its hidden states as usual and its output embedding only
at a bool ``positions`` mask ``[B, T]``, so the logits come back as ``[N, V]`` (the ``True``
positions in row-major order, as ``tensor[positions]`` orders them) and their per-token losses
are scattered back to ``[B, T]`` (zero elsewhere): every loss, gradient and metric downstream is
the full computation's (equal within float tolerance: the other positions' logits never reach
the loss, so they contribute exactly zero gradient).

Mechanism (:func:`forward_logits`)
    Every causal LM of the families megaproc builds (GPT-2, GPT-NeoX/Pythia, Llama, Qwen3) takes
    ``logits_to_keep`` in its forward and applies ``transformers.modeling_utils.
    slice_logits_to_keep`` to the last hidden state before ``lm_head`` (checked in the installed
    transformers 5.24 source): a 2-D *bool* tensor keeps the ``True`` positions and flattens
    them to ``[N, hidden]`` (a 2-D integer tensor would mean positions, not a mask).  For a
    model whose forward lacks ``logits_to_keep`` a forward pre-hook on
    ``model.get_output_embeddings()`` does the same gather on that module's input.  Both work
    through a DeepSpeed engine and under ZeRO-3: the gather happens on activations, and ZeRO-3's
    parameter fetch hooks on the head module (GPT-2's ``lm_head`` shares ``wte``'s weight) are
    untouched (``tests/models/test_sliced_head.py`` checks losses and gradients against the full
    computation for each family, directly and through ZeRO-2/3 engines).

Which positions (:func:`head_positions`)
    ``mean``: none is sliced (every label trains; a plain LM step is exactly what it was).
    ``weighted``: every label position (only padding is left out; None when there is none).
    ``answer_only``: the answer tokens and their eos; ``answer_word``: the answer's tokens —
    each joined with ``word_mask`` and ``boundary_mask`` for the correctness check.

A packed batch with document masking (:mod:`megaproc.models.document_attention`) goes through
the same forward; under flash attention it is flattened into one row, and the positions with it.

Sequence classification never needs this: its head already reads only the last token's hidden
state (:class:`megaproc.models.classification.SequenceClassifier`).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch

from megaproc.loss import label_mask, token_cross_entropy
from megaproc.models.document_attention import model_inputs


def head_positions(loss_kind: str, labels: torch.Tensor, answer_mask: torch.Tensor,
                   word_mask: torch.Tensor | None = None,
                   boundary_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """Bool [B, T]: the positions whose logits the loss ``loss_kind`` and the correctness check
    read, or None when every position is needed (nothing to slice).

    ``answer_mask``/``word_mask``/``boundary_mask`` are the batch's masks (aligned with
    ``labels``); the union covers what :func:`megaproc.loss.training_loss`,
    :func:`megaproc.loss.training_mask` and
    :func:`megaproc.eval.answer_correctness.teacher_forced_correct` read.
    """
    if loss_kind == "mean":
        return None
    labelled = label_mask(labels)
    if loss_kind == "weighted":
        return None if bool(labelled.all()) else labelled
    device = labels.device
    word = (answer_mask if word_mask is None else word_mask).to(device).bool()
    trained = answer_mask.to(device).bool() if loss_kind == "answer_only" else word
    positions = (trained | word) & labelled
    if boundary_mask is not None:
        # The boundary is the eos label after the answer; kept as given (not filtered by the
        # labels) because the correctness check reads it as given.
        positions = positions | boundary_mask.to(device).bool()
    return positions


def accepts_logits_to_keep(model) -> bool:
    """True when ``model`` (or the module a DeepSpeed engine wraps) takes ``logits_to_keep``."""
    module = getattr(model, "module", model)
    # HF wraps forward in functools.wraps decorators; inspect.signature follows __wrapped__.
    return "logits_to_keep" in inspect.signature(module.forward).parameters


@contextmanager
def gather_before_head(model, positions: torch.Tensor):
    """While active, the output embedding of ``model`` sees only the hidden states at
    ``positions`` (a forward pre-hook that returns ``hidden[positions]``, [N, hidden])."""
    module = getattr(model, "module", model)
    head = module.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(module).__name__} has no output embedding to slice")

    def gather(_head, args):
        hidden = args[0]
        if hidden.shape[:2] != positions.shape:
            raise ValueError(f"hidden states {tuple(hidden.shape)} do not match the positions "
                             f"{tuple(positions.shape)}")
        return (hidden[positions], *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def forward_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   positions: torch.Tensor | None = None,
                   position_ids: torch.Tensor | None = None,
                   document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Forward ``model`` (an HF causal LM or a DeepSpeed engine around one): logits [B, T, V],
    or [N, V] at the ``True`` positions of ``positions`` [B, T] (see the module docstring).

    ``position_ids`` / ``document_ids`` [B, T] are a packed batch's document masking
    (:func:`megaproc.models.document_attention.model_inputs`); None for a plain batch."""
    inputs = model_inputs(model, input_ids, attention_mask, position_ids, document_ids)
    if positions is None:
        return inputs.logits(model(**inputs.kwargs).logits)
    positions = positions.to(input_ids.device).bool()
    keep = inputs.keep(positions)
    if accepts_logits_to_keep(model):
        logits = model(**inputs.kwargs, logits_to_keep=keep).logits
    else:
        with gather_before_head(model, keep):
            logits = model(**inputs.kwargs).logits
    count = int(positions.sum())
    if logits.dim() != 2 or logits.size(0) != count:
        raise RuntimeError(f"{type(getattr(model, 'module', model)).__name__} returned logits "
                           f"{tuple(logits.shape)} for {count} sliced positions; this model "
                           "cannot slice its head (set train.sliced_head: false)")
    return logits


def scatter_positions(values: torch.Tensor, positions: torch.Tensor | None,
                      fill: float | int = 0) -> torch.Tensor:
    """``values`` [N, ...] at the ``True`` positions of ``positions`` [B, T], ``fill``
    elsewhere -> [B, T, ...] (differentiable); ``values`` itself when ``positions`` is None."""
    if positions is None:
        return values
    out = values.new_full(tuple(positions.shape) + tuple(values.shape[1:]), fill)
    return out.index_put((positions.to(values.device),), values)


def sliced_token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                               positions: torch.Tensor | None) -> torch.Tensor:
    """Per-token cross entropy [B, T] (float32, 0 on ignored labels and outside ``positions``)
    from logits [N, V] at ``positions`` (or [B, T, V] when ``positions`` is None)."""
    if positions is None:
        return token_cross_entropy(logits, labels)
    return scatter_positions(token_cross_entropy(logits, labels[positions]), positions)


def sliced_argmax(logits: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """Greedy token ids [B, T] from logits [N, V] at ``positions`` (0 elsewhere) or [B, T, V]."""
    return scatter_positions(logits.argmax(dim=-1), positions)
