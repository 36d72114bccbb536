"""Weight-group transfer from ``model.init_from`` and freezing by ``model.weights_to_train``.

Every parameter of a supported architecture belongs to exactly one *group*:

===========  ===============================  ==================================  =====================================
group        GPT-2                            GPT-NeoX / Pythia                   Llama / Qwen
===========  ===============================  ==================================  =====================================
``attn``     ``attn.c_attn``, ``attn.c_proj``  ``attention.query_key_value``,      ``self_attn.{q,k,v,o}_proj`` (and Qwen3's
                                              ``attention.dense``                 ``self_attn.{q,k}_norm``)
``ffn``      ``mlp.*``                        ``mlp.dense_h_to_4h/dense_4h_to_h``  ``mlp.{gate,up,down}_proj``
``ln``       ``ln_1``, ``ln_2``, ``ln_f``      ``input_layernorm``,                ``input_layernorm``,
                                              ``post_attention_layernorm``,       ``post_attention_layernorm``, ``norm``
                                              ``final_layer_norm``
``embed``    ``wte``, ``wpe``, ``lm_head``     ``embed_in``, ``embed_out``/``lm_head``  ``embed_tokens``, ``lm_head``
===========  ===============================  ==================================  =====================================

Transfer: the fresh model is built first (so untransferred tensors are drawn exactly as without
transfer, from the same seed), then the tensors of ``weights_to_transfer`` are copied from the
source, which must have the same architecture (model type and every copied shape, but the
vocabulary).  When vocabularies differ, the token-embedding rows follow
``model.embedding_strategy``: ``average`` (every row the mean source embedding), ``retain``
(keep the fresh rows) or ``partial_matching`` (copy the rows of tokens present in both
tokenizers, keep fresh rows for the others).

Freezing: parameters outside ``weights_to_train`` get ``requires_grad=False``; the optimizer
groups take only trainable parameters (:func:`megaproc.engine.param_groups`), so frozen ones
have no gradient and no optimizer state under any ZeRO stage.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from megaproc.checkpoint.layout import resolve_checkpoint_ref
from megaproc.checkpoint.model import load_checkpoint_model, load_checkpoint_tokenizer
from megaproc.console_log import get_logger
from megaproc.errors import ConfigError
from megaproc.tokenizer import load_tokenizer

log = get_logger(__name__)

GROUPS = ("attn", "ffn", "ln", "embed")
_PATTERNS = {
    "gpt2": {"attn": r"\.attn\.", "ffn": r"\.mlp\.", "ln": r"\.(ln_1|ln_2|ln_f)\.",
             "embed": r"(\.wte\.|\.wpe\.|^lm_head\.)"},
    "gpt_neox": {"attn": r"\.attention\.", "ffn": r"\.mlp\.",
                 "ln": r"\.(input_layernorm|post_attention_layernorm|final_layer_norm)\.",
                 "embed": r"(\.embed_in\.|embed_out\.|^lm_head\.)"},
    "llama": {"attn": r"\.self_attn\.", "ffn": r"\.mlp\.",
              "ln": r"(\.input_layernorm\.|\.post_attention_layernorm\.|^model\.norm\.)",
              "embed": r"(\.embed_tokens\.|^lm_head\.)"},
}
_PATTERNS["qwen3"] = _PATTERNS["qwen2"] = _PATTERNS["llama"]
# Token-embedding matrices (rows = vocabulary) per architecture.
_TOKEN_ROWS = r"(\.wte\.|\.embed_in\.|embed_out\.|\.embed_tokens\.|^lm_head\.)"


def expand_groups(groups: list[str]) -> set[str]:
    """``["everything"]`` -> every group; otherwise the named groups."""
    return set(GROUPS) if "everything" in groups else set(groups)


def parameter_group(name: str, model_type: str) -> str:
    """The group of parameter ``name`` in a model of ``model_type``."""
    patterns = _PATTERNS.get(model_type)
    if patterns is None:
        raise ConfigError(f"weight groups are defined for {sorted(_PATTERNS)}, not model type "
                          f"{model_type!r}; use weights_to_transfer/weights_to_train: [everything]")
    matches = [group for group, pattern in patterns.items() if re.search(pattern, name)]
    if len(matches) != 1:
        raise ConfigError(f"parameter {name} of a {model_type} model matches groups {matches}; "
                          "the group map needs updating")
    return matches[0]


def load_source(ref: str):
    """``(state_dict, model_type, tokenizer_or_None, description)`` of an ``init_from`` reference:
    a local HF model directory, a megaproc checkpoint directory, a run directory or
    ``latest:RUN_DIR``."""
    path = Path(ref)
    if not ref.startswith("latest:") and (path / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
        tokenizer = None
        if any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            tokenizer = load_tokenizer(path)
        return model.state_dict(), model.config.model_type, tokenizer, f"HF model {path}"
    source = resolve_checkpoint_ref(ref)
    model = load_checkpoint_model(source)
    return (model.state_dict(), model.config.model_type, load_checkpoint_tokenizer(source),
            f"checkpoint {source}")


def _embedding_rows(fresh: torch.Tensor, src: torch.Tensor, strategy: str, tokenizer,
                    src_tokenizer) -> tuple[torch.Tensor, str]:
    """Rows of a token-embedding matrix when the vocabularies differ."""
    if strategy == "retain":
        return fresh, "retained (vocabulary differs)"
    if strategy == "average":
        return src.mean(dim=0, keepdim=True).expand_as(fresh).clone(), "average of source rows"
    if tokenizer is None or src_tokenizer is None:
        raise ConfigError("model.embedding_strategy=partial_matching needs the tokenizers of both "
                          "models (the source has none saved)")
    src_vocab = src_tokenizer.get_vocab()
    out, matched = fresh.clone(), 0
    for token, row in tokenizer.get_vocab().items():
        src_row = src_vocab.get(token)
        if src_row is not None and row < out.shape[0] and src_row < src.shape[0]:
            out[row] = src[src_row]
            matched += 1
    return out, f"{matched} matching token rows copied"


def transfer_weights(model, model_cfg, tokenizer=None) -> dict:
    """Copy ``weights_to_transfer`` from ``model_cfg.init_from`` into ``model``; returns
    ``{tensor name: note}`` for the copied tensors."""
    state, src_type, src_tokenizer, where = load_source(model_cfg.init_from)
    model_type = model.config.model_type
    if src_type != model_type:
        raise ConfigError(f"model.init_from {where}: a {src_type} model cannot initialise a "
                          f"{model_type} model (transfer needs the same architecture)")
    groups = expand_groups(model_cfg.weights_to_transfer)
    copied = {}
    own = model.state_dict()
    with torch.no_grad():
        for name, tensor in own.items():
            group = parameter_group(name, model_type) if name in dict(model.named_parameters()) \
                else None
            if group is None or group not in groups:
                continue
            if name not in state:
                tied = name.startswith("lm_head.") and model.config.tie_word_embeddings
                if tied:
                    continue  # tied to the input embedding, which is copied
                raise ConfigError(f"model.init_from {where}: source has no tensor {name}")
            src = state[name]
            if src.shape == tensor.shape:
                tensor.copy_(src)
                copied[name] = "copied"
            elif re.search(_TOKEN_ROWS, name) and src.shape[1:] == tensor.shape[1:]:
                rows, note = _embedding_rows(tensor, src, model_cfg.embedding_strategy, tokenizer,
                                             src_tokenizer)
                tensor.copy_(rows)
                copied[name] = note
            else:
                raise ConfigError(f"model.init_from {where}: tensor {name} has shape "
                                  f"{tuple(src.shape)} in the source but {tuple(tensor.shape)} "
                                  "here (transfer needs the same architecture)")
    if model.config.tie_word_embeddings:
        model.tie_weights()
    log.info(f"initialised model weights from {where}: {len(copied)} tensors ({', '.join(sorted(groups))})")
    return copied


def freeze_weights(model, weights_to_train: list[str]) -> int:
    """``requires_grad=False`` on parameters outside ``weights_to_train``; returns how many
    parameters (elements) still train."""
    groups = expand_groups(weights_to_train)
    if groups == set(GROUPS):
        return sum(p.numel() for p in model.parameters())
    model_type = model.config.model_type
    trainable = 0
    for name, param in model.named_parameters():
        param.requires_grad_(parameter_group(name, model_type) in groups)
        trainable += param.numel() if param.requires_grad else 0
    if trainable == 0:
        raise ConfigError(f"model.weights_to_train {weights_to_train}: no parameter trains")
    return trainable


def transfer_report(model, copied: dict) -> dict:
    """``transfer.json``: every tensor with its group, whether it was copied and whether it trains."""
    model_type = model.config.model_type
    rows = {}
    for name, param in model.named_parameters():
        group = parameter_group(name, model_type) if model_type in _PATTERNS else None
        rows[name] = {"group": group, "copied": name in copied, "trainable": param.requires_grad,
                      **({"note": copied[name]} if name in copied else {})}
    return rows


def write_transfer_report(path: Path, report: dict) -> str:
    """Write ``transfer.json`` and return the one-line summary."""
    path.write_text(json.dumps(report, indent=2))
    copied = sum(r["copied"] for r in report.values())
    trainable = sum(r["trainable"] for r in report.values())
    return (f"transfer: {copied}/{len(report)} tensors copied, {trainable}/{len(report)} "
            f"trainable ({path})")
