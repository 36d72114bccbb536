"""``config_overrides``: parse ``"n_embd=512,n_layer=8,n_head=8"`` and check the keys.

Keys are attribute names of the model type's HF config class (``n_embd`` for GPT-2,
``hidden_size`` for Pythia/Qwen3/Llama, ...) plus a few conveniences:

* the config class's own aliases (GPT-2 accepts ``hidden_size``, ``num_hidden_layers``,
  ``num_attention_heads`` and ``max_position_embeddings`` for its ``n_*`` names);
* RoPE scalars, which transformers 5 keeps inside ``rope_parameters``: ``rope_theta``
  (alias ``rotary_emb_base``), ``partial_rotary_factor`` (alias ``rotary_pct``) and
  ``rope_type``;
* ``attn_implementation`` (``sdpa`` by default, ``eager``, or ``flash_attention_2`` on CUDA
  machines with flash-attn installed), which selects the attention kernel rather than being
  saved in the config.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from transformers import PretrainedConfig

ATTN_IMPLEMENTATION_KEY = "attn_implementation"

# Friendly names for scalars that live inside ``rope_parameters`` in transformers 5.
ROPE_ALIASES: dict[str, str] = {
    "rope_theta": "rope_theta",
    "rotary_emb_base": "rope_theta",
    "partial_rotary_factor": "partial_rotary_factor",
    "rotary_pct": "partial_rotary_factor",
    "rope_type": "rope_type",
}

# Fields of every HF config that say nothing about the architecture (bookkeeping, output
# switches, classification labels); ``dtype`` stays overridable.
_NOT_OVERRIDABLE = frozenset(PretrainedConfig().to_dict()) - {"dtype"}
# The vocabulary always comes from the run's tokenizer.
_FROM_TOKENIZER = "vocab_size"


def parse_value(text: str) -> Any:
    """Turn an override value string into a bool, None, int, float or (stripped) str."""
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_overrides(overrides: str | dict | None) -> dict[str, Any]:
    """Parse ``"a=1,b=x"`` (or pass a mapping through) into a dict of typed values.

    String values in a mapping are parsed like the string form, so ``{"n_layer": "8"}``
    and ``"n_layer=8"`` mean the same.  A malformed item is a ``ValueError``.
    """
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return {str(k).strip(): parse_value(v) if isinstance(v, str) else v
                for k, v in overrides.items()}
    if not isinstance(overrides, str):
        raise ValueError(f"config_overrides must be a string or a mapping, got "
                         f"{type(overrides).__name__}")
    parsed: dict[str, Any] = {}
    for item in overrides.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"config_overrides item {item.strip()!r} is not KEY=VALUE "
                             "(expected e.g. 'n_embd=512,n_layer=8,n_head=8')")
        parsed[key.strip()] = parse_value(value)
    return parsed


@lru_cache(maxsize=None)
def _config_fields(config_class: type[PretrainedConfig]) -> frozenset[str]:
    """Attribute names of a default instance of ``config_class``."""
    return frozenset(config_class().to_dict()) - _NOT_OVERRIDABLE - {_FROM_TOKENIZER}


def valid_override_keys(config_class: type[PretrainedConfig]) -> list[str]:
    """Every key ``config_overrides`` accepts for ``config_class``, sorted."""
    keys = set(_config_fields(config_class)) | set(config_class.attribute_map)
    if "rope_parameters" in keys:
        keys |= set(ROPE_ALIASES)
    keys.add(ATTN_IMPLEMENTATION_KEY)
    return sorted(keys)


def apply_overrides(kwargs: dict[str, Any], overrides: dict[str, Any],
                    config_class: type[PretrainedConfig], model_name: str) -> str | None:
    """Merge ``overrides`` into the config ``kwargs`` in place; return ``attn_implementation``.

    Aliases are resolved to the canonical attribute (``hidden_size`` -> ``n_embd`` for GPT-2,
    ``rope_theta`` -> ``rope_parameters["rope_theta"]``).  An unknown key is a ``ValueError``
    naming it and the valid keys.
    """
    valid = valid_override_keys(config_class)
    attn_implementation = None
    for key, value in overrides.items():
        if key == _FROM_TOKENIZER:
            raise ValueError(f"config override {key!r} for model {model_name!r} is not allowed: "
                             "the vocabulary size always comes from the tokenizer")
        if key not in valid:
            raise ValueError(f"unknown config override {key!r} for model {model_name!r} "
                             f"({config_class.model_type}); valid keys: {', '.join(valid)}")
        if key == ATTN_IMPLEMENTATION_KEY:
            attn_implementation = value
        elif key in ROPE_ALIASES and key not in _config_fields(config_class):
            rope = dict(kwargs.get("rope_parameters") or {"rope_type": "default"})
            rope[ROPE_ALIASES[key]] = value
            kwargs["rope_parameters"] = rope
        else:
            kwargs[config_class.attribute_map.get(key, key)] = value
    return attn_implementation
