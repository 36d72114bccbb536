"""Hard-coded model presets: every architecture megaproc can build, fully offline.

Each preset is a config class plus the hyper-parameters of the published model it imitates
(copied from the model's ``config.json``), so nothing is ever fetched from the hub.  The
vocabulary size and the special-token ids are deliberately *not* part of a preset: they come
from the run's tokenizer (see :func:`megaproc.models.model_config`).

Besides the named presets, ``gpt2:L_H_D`` builds a custom GPT-2 with ``L`` layers, ``H``
heads and embedding width ``D`` (for example ``gpt2:8_8_512``, the ~50M model of the
diversity experiments).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, PretrainedConfig, Qwen3Config


@dataclass(frozen=True)
class Preset:
    """One buildable architecture: a HF config class and the keyword arguments for it.

    ``position_key`` is the config attribute holding the context length and
    ``dropout_keys`` the attributes a single ``dropout`` value is written to.
    """

    name: str
    config_class: type[PretrainedConfig]
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def model_type(self) -> str:
        """The HF ``model_type`` of the preset's config class (``gpt2``, ``gpt_neox``, ...)."""
        return self.config_class.model_type

    @property
    def position_key(self) -> str:
        """Config attribute that holds the maximum sequence length."""
        return "n_positions" if self.model_type == "gpt2" else "max_position_embeddings"

    @property
    def dropout_keys(self) -> tuple[str, ...]:
        """Config attributes that a single ``dropout`` probability is applied to."""
        return DROPOUT_KEYS[self.model_type]


# Where one "dropout" knob goes for each model type.  Llama and Qwen3 only have attention
# dropout; their residual stream has no dropout layer at all.
DROPOUT_KEYS: dict[str, tuple[str, ...]] = {
    "gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    "gpt_neox": ("attention_dropout", "hidden_dropout"),
    "llama": ("attention_dropout",),
    "qwen3": ("attention_dropout",),
}


def _gpt2(n_layer: int, n_head: int, n_embd: int, n_positions: int = 1024) -> dict[str, Any]:
    """GPT-2 hyper-parameters (the HF defaults are the published ones apart from size)."""
    return {
        "n_layer": n_layer,
        "n_head": n_head,
        "n_embd": n_embd,
        "n_positions": n_positions,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
    }


def _pythia(hidden: int, layers: int, heads: int, intermediate: int) -> dict[str, Any]:
    """Pythia (GPT-NeoX) hyper-parameters shared by every size."""
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": intermediate,
        "hidden_act": "gelu",
        "max_position_embeddings": 2048,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                            "partial_rotary_factor": 0.25},
        "use_parallel_residual": True,
        "layer_norm_eps": 1e-5,
        "initializer_range": 0.02,
        "attention_bias": True,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
        "tie_word_embeddings": False,
    }


def _qwen3(hidden: int, layers: int, intermediate: int) -> dict[str, Any]:
    """Qwen3 dense hyper-parameters (0.6B and 1.7B share everything but the widths)."""
    return {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "max_position_embeddings": 40960,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": layers,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
    }


def _llama3_1b() -> dict[str, Any]:
    """Llama-3.2-1B hyper-parameters, including its llama3 RoPE frequency scaling."""
    return {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "rms_norm_eps": 1e-5,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
    }


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("tiny", GPT2Config, _gpt2(2, 2, 64), "GPT-2, 2 layers x 64 dims, for tests"),
        Preset("gpt2", GPT2Config, _gpt2(12, 12, 768), "GPT-2 small (124M)"),
        Preset("gpt2-medium", GPT2Config, _gpt2(24, 16, 1024), "GPT-2 medium (355M)"),
        Preset("gpt2-large", GPT2Config, _gpt2(36, 20, 1280), "GPT-2 large (774M)"),
        Preset("gpt2-xl", GPT2Config, _gpt2(48, 25, 1600), "GPT-2 XL (1.5B)"),
        Preset("pythia-14m", GPTNeoXConfig, _pythia(128, 6, 4, 512), "Pythia 14M"),
        Preset("pythia-70m", GPTNeoXConfig, _pythia(512, 6, 8, 2048), "Pythia 70M"),
        Preset("pythia-160m", GPTNeoXConfig, _pythia(768, 12, 12, 3072), "Pythia 160M"),
        Preset("pythia-410m", GPTNeoXConfig, _pythia(1024, 24, 16, 4096), "Pythia 410M"),
        Preset("pythia-1b", GPTNeoXConfig, _pythia(2048, 16, 8, 8192), "Pythia 1B"),
        Preset("qwen3-0.6b", Qwen3Config, _qwen3(1024, 28, 3072), "Qwen3 0.6B"),
        Preset("qwen3-1.7b", Qwen3Config, _qwen3(2048, 28, 6144), "Qwen3 1.7B"),
        Preset("llama3-1b", LlamaConfig, _llama3_1b(), "Llama 3.2 1B"),
    ]
}

# The custom GPT-2 pattern, listed with the named presets in error messages.
CUSTOM_GPT2_PATTERN = "gpt2:L_H_D"
_CUSTOM_GPT2 = re.compile(r"^gpt2:(\d+)_(\d+)_(\d+)$")

PRESET_NAMES: list[str] = [*PRESETS, CUSTOM_GPT2_PATTERN]


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ``gpt2:L_H_D`` builds a custom GPT-2 preset on the fly.

    Raises ``ValueError`` listing the valid names for an unknown name, or explaining the
    problem for a malformed custom GPT-2 size.
    """
    if name in PRESETS:
        return PRESETS[name]
    match = _CUSTOM_GPT2.match(name.strip())
    if match:
        n_layer, n_head, n_embd = (int(g) for g in match.groups())
        if min(n_layer, n_head, n_embd) <= 0:
            raise ValueError(f"model {name!r}: layers, heads and embedding size must be positive")
        if n_embd % n_head:
            raise ValueError(f"model {name!r}: embedding size {n_embd} is not divisible by "
                             f"{n_head} heads")
        return Preset(name, GPT2Config, _gpt2(n_layer, n_head, n_embd),
                      f"custom GPT-2: {n_layer} layers, {n_head} heads, {n_embd} dims")
    if name.startswith("gpt2:"):
        raise ValueError(f"model {name!r}: custom GPT-2 sizes are written gpt2:LAYERS_HEADS_EMBD, "
                         "e.g. gpt2:12_12_768")
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(PRESET_NAMES)}")
