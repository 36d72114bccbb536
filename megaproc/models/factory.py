"""Build model configs and models: random init from a preset, or a local pretrained directory.

Everything here is offline: presets are hard-coded (see :mod:`megaproc.models.presets`) and
pretrained weights are only ever read from a local ``save_pretrained`` directory.
"""

from __future__ import annotations

import json
import operator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from megaproc.models.overrides import apply_overrides, parse_overrides
from megaproc.models.presets import DROPOUT_KEYS, get_preset

DEFAULT_ATTN_IMPLEMENTATION = "sdpa"
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _check_heads(kwargs: dict[str, Any], model_name: str) -> None:
    """Reject head counts that do not divide the width (HF would fail much later)."""
    width = kwargs.get("n_embd", kwargs.get("hidden_size"))
    heads = kwargs.get("n_head", kwargs.get("num_attention_heads"))
    kv_heads = kwargs.get("num_key_value_heads")
    if width is None or heads is None:
        return
    if kwargs.get("head_dim") is None and width % heads:
        raise ValueError(f"model {model_name!r}: width {width} is not divisible by {heads} "
                         "attention heads")
    if kv_heads is not None and heads % kv_heads:
        raise ValueError(f"model {model_name!r}: {heads} attention heads are not divisible by "
                         f"{kv_heads} key/value heads")


def model_config(name: str, vocab_size: int, overrides: str | dict = "",
                 max_position_embeddings: int | None = None, dropout: float | None = None, *,
                 bos_token_id: int | None = None, eos_token_id: int | None = None,
                 pad_token_id: int | None = None) -> PretrainedConfig:
    """The HF config of preset ``name`` for a tokenizer with ``vocab_size`` tokens.

    Precedence, lowest first: the preset, ``overrides`` (``"n_embd=512,n_layer=8"`` or a
    mapping of config attribute names), then the explicit ``max_position_embeddings``
    (``n_positions`` for GPT-2), ``dropout`` (applied to every dropout probability of the
    architecture) and the special-token ids.  Token ids are the caller's (``None`` unless
    given as arguments or overrides), never the preset's published ones.

    The attention kernel is ``sdpa`` unless the overrides ask for another one, e.g.
    ``attn_implementation=flash_attention_2`` on CUDA machines with flash-attn installed.

    Raises ``ValueError`` for an unknown preset name or override key (naming the valid ones)
    and for inconsistent sizes.
    """
    try:
        vocab_size = operator.index(vocab_size)  # accepts numpy ints, rejects floats
    except TypeError:
        vocab_size = -1
    if vocab_size <= 0:
        raise ValueError("vocab_size must be a positive int (the tokenizer's size)")
    preset = get_preset(name)
    kwargs = dict(preset.kwargs)
    if "rope_parameters" in kwargs:  # never mutate the preset's own dict
        kwargs["rope_parameters"] = dict(kwargs["rope_parameters"])
    # The published special-token ids rarely fit the run's vocabulary: start from none.
    kwargs.update(dict.fromkeys(TOKEN_ID_KEYS))
    attn = apply_overrides(kwargs, parse_overrides(overrides), preset.config_class, name)
    if max_position_embeddings is not None:
        kwargs[preset.position_key] = int(max_position_embeddings)
    if dropout is not None:
        kwargs.update({key: float(dropout) for key in preset.dropout_keys})
    token_ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
                 "pad_token_id": pad_token_id}
    kwargs.update({key: value for key, value in token_ids.items() if value is not None})
    kwargs["vocab_size"] = vocab_size
    _check_heads(kwargs, name)
    config = preset.config_class(**kwargs)
    config._attn_implementation = attn or DEFAULT_ATTN_IMPLEMENTATION
    return config


def count_parameters(config: PretrainedConfig) -> int:
    """Number of distinct parameters of the model ``config`` describes, without allocating.

    The model is instantiated on the ``meta`` device, so even multi-billion parameter
    configs cost no memory.  Tied weights count once.
    """
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


class _ZeRO3ConstructionConfig:
    """Minimal stand-in for ``HfDeepSpeedConfig`` (which needs ``accelerate``).

    transformers consults it through a module-level weak reference to decide whether to build
    models under ``deepspeed.zero.Init``; it only needs ``config`` and ``is_zero3()``.
    """

    def __init__(self, ds_config: dict):
        self.config = ds_config

    def is_zero3(self) -> bool:
        """Always true: this object only exists while building a ZeRO-3 model."""
        return True

    def is_offload(self) -> bool:
        """Whether the DeepSpeed config offloads parameters or optimizer states."""
        zero = self.config.get("zero_optimization", {})
        return any(zero.get(key, {}).get("device") in ("cpu", "nvme")
                   for key in ("offload_param", "offload_optimizer"))

    def get_value(self, ds_key_long: str, default: Any = None) -> Any:
        """A dotted-path value of the DeepSpeed config (``accelerate`` API)."""
        node: Any = self.config
        for part in ds_key_long.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


@contextmanager
def zero3_construction(ds_config: dict | str | Path) -> Iterator[None]:
    """Make transformers build (and load) models partitioned under ``deepspeed.zero.Init``.

    transformers' own ZeRO-3 path is used, so weights are initialised correctly on the full
    (gathered) tensors, RoPE buffers keep their dtype, and ``from_pretrained`` loads weights
    straight into partitions.  The switch is process-global inside transformers, so it is
    only held for the duration of the ``with`` block; an ``HfDeepSpeedConfig`` the caller
    created beforehand is respected and left in place.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    if hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    if not isinstance(ds_config, dict):
        ds_config = json.loads(Path(ds_config).read_text())
    previous_ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    holder = _ZeRO3ConstructionConfig(ds_config)
    hf_deepspeed.set_hf_deepspeed_config(holder)
    try:
        yield
    finally:
        previous = previous_ref() if previous_ref is not None else None
        if previous is None:
            hf_deepspeed.unset_hf_deepspeed_config()
        else:
            hf_deepspeed.set_hf_deepspeed_config(previous)


def _model_fields(model_cfg: Any) -> dict[str, Any]:
    """Read the model section (a ``ModelConfig`` dataclass, any object, or a dict)."""
    fields = ("name", "config_overrides", "pretrained_path", "max_position_embeddings",
              "dropout")
    defaults = {"name": "tiny", "config_overrides": ""}
    get = model_cfg.get if isinstance(model_cfg, dict) else \
        (lambda key, default=None: getattr(model_cfg, key, default))
    return {key: get(key, defaults.get(key)) for key in fields}


def _pretrained_config(path: Path, vocab_size: int, overrides: str | dict,
                       max_position_embeddings: int | None, dropout: float | None,
                       token_ids: dict[str, int | None]) -> tuple[PretrainedConfig, str | None]:
    """The config of a local pretrained model with the run's overrides applied."""
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    config_class = type(config)
    model_type = config_class.model_type
    kwargs = config.to_dict()
    for key in ("transformers_version", "model_type", "_name_or_path"):
        kwargs.pop(key, None)
    attn = apply_overrides(kwargs, parse_overrides(overrides), config_class, str(path))
    if max_position_embeddings is not None:
        if model_type == "gpt2":
            if int(max_position_embeddings) != config.n_positions:
                raise ValueError(
                    f"{path}: GPT-2 learns its position embeddings, so a pretrained model "
                    f"cannot change n_positions ({config.n_positions} -> "
                    f"{max_position_embeddings}); drop model.max_position_embeddings")
        else:
            kwargs["max_position_embeddings"] = int(max_position_embeddings)
    if dropout is not None:
        if model_type not in DROPOUT_KEYS:
            raise ValueError(f"{path}: do not know the dropout fields of model type "
                             f"{model_type!r}; set them with config_overrides instead")
        kwargs.update({key: float(dropout) for key in DROPOUT_KEYS[model_type]})
    kwargs.update({key: value for key, value in token_ids.items() if value is not None})
    kwargs.pop("vocab_size", None)
    new_config = config_class.from_dict(kwargs, vocab_size=config.vocab_size)
    return new_config, attn


def load_pretrained(path: str | Path, vocab_size: int, overrides: str | dict = "",
                    max_position_embeddings: int | None = None, dropout: float | None = None,
                    **token_ids: int | None) -> PreTrainedModel:
    """Load a local ``save_pretrained`` directory in fp32 for training.

    The embedding matrix is grown to ``vocab_size`` when the tokenizer has more tokens than
    the model; a model whose (padded) vocabulary is already large enough is left unchanged,
    so its pretrained rows stay exactly as published.  ``max_position_embeddings`` may be
    changed for rotary models (Pythia, Qwen3, Llama) but not for GPT-2.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"pretrained_path {path} is not a local HF model directory "
                         "(no config.json); nothing is downloaded at run time")
    config, attn = _pretrained_config(path, vocab_size, overrides, max_position_embeddings,
                                      dropout, token_ids)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), config=config, local_files_only=True, dtype=torch.float32,
        attn_implementation=attn or DEFAULT_ATTN_IMPLEMENTATION)
    if vocab_size > model.config.vocab_size:
        model.resize_token_embeddings(vocab_size)
    return model


def run_config(model_cfg: Any, vocab_size: int) -> PretrainedConfig:
    """The HF config, attention implementation included, of the causal LM :func:`build_model`
    builds from ``model_cfg`` (without building it): the preset's or the pretrained model's,
    with the overrides applied."""
    fields = _model_fields(model_cfg)
    if not fields["pretrained_path"]:
        return model_config(fields["name"], vocab_size, fields["config_overrides"],
                            fields["max_position_embeddings"], fields["dropout"])
    config, attn = _pretrained_config(Path(fields["pretrained_path"]), vocab_size,
                                      fields["config_overrides"],
                                      fields["max_position_embeddings"], fields["dropout"], {})
    config._attn_implementation = attn or DEFAULT_ATTN_IMPLEMENTATION
    return config


def build_model(model_cfg: Any, vocab_size: int, zero3_init: bool = False,
                ds_config: dict | str | None = None, *, bos_token_id: int | None = None,
                eos_token_id: int | None = None,
                pad_token_id: int | None = None) -> PreTrainedModel:
    """Build the causal LM described by the run's model section.

    ``model_cfg`` has ``name``, ``config_overrides``, ``pretrained_path``,
    ``max_position_embeddings`` and ``dropout`` (a ``megaproc.config.ModelConfig``, any
    object with those attributes, or a dict).  Without ``pretrained_path`` the model is
    randomly initialised from the preset (seed torch first for reproducibility); with it,
    the local directory is loaded (see :func:`load_pretrained`).

    With ``zero3_init=True`` the model is constructed under
    ``deepspeed.zero.Init(config_dict_or_path=ds_config)`` so each rank only ever holds its
    partition; torch.distributed must already be initialised.
    """
    fields = _model_fields(model_cfg)
    token_ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
                 "pad_token_id": pad_token_id}
    if zero3_init and ds_config is None:
        raise ValueError("zero3_init=True needs the DeepSpeed config (ds_config)")
    context = zero3_construction(ds_config) if zero3_init else nullcontext()
    with context:
        if fields["pretrained_path"]:
            return load_pretrained(fields["pretrained_path"], vocab_size,
                                   fields["config_overrides"],
                                   fields["max_position_embeddings"], fields["dropout"],
                                   **token_ids)
        config = model_config(fields["name"], vocab_size, fields["config_overrides"],
                              fields["max_position_embeddings"], fields["dropout"], **token_ids)
        return AutoModelForCausalLM.from_config(
            config, attn_implementation=config._attn_implementation)
