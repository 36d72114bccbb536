"""Model size, model FLOPs and accelerator peaks: the numbers behind ``megaproc.plan`` and MFU.

* :func:`geometry` reads the shapes that matter (widths, heads, MLP kind, tying) from a HF
  config of the architectures megaproc builds (GPT-2, GPT-NeoX/Pythia, Llama, Qwen3);
* :func:`parameter_counts` gives the distinct parameters, the parameters of the largest single
  module (what DeepSpeed's ZeRO-3 estimator calls ``largest_layer_params``) and the weights of
  the matrix multiplies, all from those shapes, without building the model;
* :func:`model_flops_per_token` is the training FLOPs per token in the PaLM convention:
  ``6 * N_matmul + 12 * L * d_attn * T`` (forward 2 FLOPs per weight per token, backward
  twice that; attention scores and the weighted sum over all ``T`` positions, causal masking
  not discounted; recomputation under activation checkpointing *not* counted, so the MFU of a
  checkpointed run is comparable with one that is not);
* :func:`peak_flops` is the dense bf16 tensor-core peak of the device (``None`` on CPU or an
  unknown GPU), and :func:`mfu` puts them together.

Trainer use: ``flops_per_token = model_flops_per_token(model.config, seq_len)`` once, then
``mfu(tokens_per_s, flops_per_token, peak, world_size)`` per log line (``tokens_per_s``
summed over all ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_MODEL_TYPES = ("gpt2", "gpt_neox", "llama", "qwen3")


@dataclass(frozen=True)
class Geometry:
    """The shapes of a decoder-only transformer that size, FLOPs and memory depend on."""

    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    positions: int            # learned position embeddings (GPT-2 only), else 0
    gated_mlp: bool           # SwiGLU (gate, up, down) instead of fc -> act -> proj
    tied: bool                # lm_head shares the token embedding
    attn_bias: bool           # biases on the q/k/v and output projections
    mlp_bias: bool
    norm_bias: bool           # LayerNorm (weight + bias) rather than RMSNorm (weight)
    qk_norm: bool             # per-head RMSNorm of q and k (Qwen3)
    resid_dropout: float      # dropout after attention / MLP outputs
    attn_dropout: float
    embd_dropout: float

    @property
    def q_dim(self) -> int:
        """Width of the queries (and of the attention output), ``heads * head_dim``."""
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the keys (and of the values), ``kv_heads * head_dim``."""
        return self.kv_heads * self.head_dim


def geometry(config) -> Geometry:
    """The :class:`Geometry` of a HF config; ``ValueError`` for other architectures."""
    kind = getattr(config, "model_type", None)
    if kind == "gpt2":
        d, heads = config.n_embd, config.n_head
        return Geometry(kind, config.vocab_size, d, config.n_layer, heads, heads, d // heads,
                        config.n_inner or 4 * d, config.n_positions, False,
                        bool(config.tie_word_embeddings), True, True, True, False,
                        config.resid_pdrop, config.attn_pdrop, config.embd_pdrop)
    if kind == "gpt_neox":
        d, heads = config.hidden_size, config.num_attention_heads
        return Geometry(kind, config.vocab_size, d, config.num_hidden_layers, heads, heads,
                        d // heads, config.intermediate_size, 0, False,
                        bool(config.tie_word_embeddings), bool(config.attention_bias), True,
                        True, False, config.hidden_dropout, config.attention_dropout, 0.0)
    if kind in ("llama", "qwen3"):
        d, heads = config.hidden_size, config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or d // heads
        return Geometry(kind, config.vocab_size, d, config.num_hidden_layers, heads,
                        config.num_key_value_heads or heads, head_dim, config.intermediate_size,
                        0, True, bool(config.tie_word_embeddings), bool(config.attention_bias),
                        bool(getattr(config, "mlp_bias", False)), False, kind == "qwen3",
                        0.0, config.attention_dropout, 0.0)
    raise ValueError(f"no size formulas for model_type {kind!r} "
                     f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")


def _layer_modules(g: Geometry) -> list[int]:
    """Own parameter counts of every module of one transformer block."""
    d, q, kv, inter = g.hidden, g.q_dim, g.kv_dim, g.intermediate
    norm = 2 * d if g.norm_bias else d
    ab, mb = int(g.attn_bias), int(g.mlp_bias)
    if g.model_type in ("gpt2", "gpt_neox"):  # fused qkv projection
        attn = [d * 3 * q + ab * 3 * q, q * d + ab * d]
    else:
        attn = [d * q + ab * q, d * kv + ab * kv, d * kv + ab * kv, q * d + ab * d]
    if g.qk_norm:
        attn += [g.head_dim, g.head_dim]
    if g.gated_mlp:
        mlp = [d * inter + mb * inter, d * inter + mb * inter, inter * d + mb * d]
    else:
        mlp = [d * inter + mb * inter, inter * d + mb * d]
    return [norm, norm, *attn, *mlp]


def parameter_counts(config) -> dict[str, int]:
    """``total`` (distinct parameters, tied weights once), ``largest_layer`` (most parameters
    held directly by one module, as DeepSpeed's ``model_to_params`` counts them), ``matmul``
    (weights of all matrix multiplies, the output projection included even when tied) and
    ``embedding`` (token + position embeddings)."""
    g = geometry(config)
    block = _layer_modules(g)
    final_norm = 2 * g.hidden if g.norm_bias else g.hidden
    embed = g.vocab * g.hidden
    position = g.positions * g.hidden
    total = embed + position + g.layers * sum(block) + final_norm + (0 if g.tied else embed)
    if g.model_type in ("gpt2", "gpt_neox"):
        per_layer_matmul = g.hidden * 3 * g.q_dim + g.q_dim * g.hidden
    else:
        per_layer_matmul = 2 * g.hidden * g.q_dim + 2 * g.hidden * g.kv_dim
    per_layer_matmul += (3 if g.gated_mlp else 2) * g.hidden * g.intermediate
    # The lm_head module holds the (possibly tied) embedding matrix as its own parameter.
    largest = max([embed, position, final_norm, *block])
    return {"total": total, "largest_layer": largest, "embedding": embed + position,
            "matmul": g.layers * per_layer_matmul + embed}


def model_flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) of the model ``config`` at ``seq_len``.

    ``6 * N_matmul + 12 * layers * heads * head_dim * seq_len``: every matmul weight costs 2
    FLOPs per token forward and 4 backward; attention (scores ``QK^T`` and the weighted sum
    with ``V``) costs ``4 * seq_len * d_attn`` per layer forward, over the full sequence.
    Activation recomputation is not included (model FLOPs, not hardware FLOPs).
    """
    g = geometry(config)
    n = parameter_counts(config)["matmul"]
    return float(6 * n + 12 * g.layers * g.q_dim * int(seq_len))


# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, in FLOP/s.  Matched
# against torch.cuda.get_device_name() in order, first hit wins (more specific names first).
BF16_PEAKS: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),         # SXM5
    ("H800", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),         # SXM4 and PCIe
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),          # A10 (not A10G, which NVIDIA does not publish)
    ("MI300X", 1307e12),
    ("MI250X", 191.5e12),     # per GCD (one torch device)
]


def peak_flops_for_name(name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the GPU called ``name`` (e.g. ``NVIDIA A100-SXM4-80GB``)."""
    for key, value in BF16_PEAKS:
        if key == "A10" and "A10G" in name:
            continue
        if key in name:
            return value
    return None


def peak_flops(device: torch.device | str | int | None = None) -> float | None:
    """Dense bf16 peak FLOP/s of ``device`` (default: the current CUDA device).

    ``None`` on CPU, without CUDA, or for a GPU not in :data:`BF16_PEAKS`; the trainer then
    needs ``train.peak_flops`` to log MFU.
    """
    if device is not None and not isinstance(device, int):
        device = torch.device(device)
        if device.type != "cuda":
            return None
    if not torch.cuda.is_available():
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device))


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops_per_device: float | None,
        num_devices: int = 1) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all ``num_devices``."""
    if not peak_flops_per_device:
        return None
    return tokens_per_second * flops_per_token / (peak_flops_per_device * num_devices)
