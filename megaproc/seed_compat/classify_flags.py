"""The seed's sequence-classification flag names, translated into dotted megaproc config keys.

The seed's ``main.py`` and its sweep files use flat names (``--lr 1e-5``, ``target_func: fn_a``);
megaproc keeps them working by translating each into an override of
``configs/classify/base.yaml``:

======================  ===================================  ==========================================
seed flag               megaproc key                          note
======================  ===================================  ==========================================
model                   model.name                            qwen0.6B, qwen1.7B, llama3, deepseek,
                                                              their ``-cpu`` variants, *_finetune
target_func             classify.target_func                  fn_a ... fn_l
sequence_length         classify.sequence_length
train_set_size          classify.train_set_size
test_set_size           classify.test_set_size
n_epochs                classify.n_epochs
eta_min                 classify.eta_min                      cosine annealing floor of the LR
num_layers_to_finetune  classify.num_layers_to_finetune       finetune wrappers only
vocab_size              classify.vocab_size                   from scratch; default: symbols + BOS
batch_size              train.micro_batch                     per rank: the seed's batch on one rank
lr                      optim.lr
weight_decay            optim.weight_decay
precision               train.precision                       bf16 | fp16 | fp32 (half needs CUDA)
seed                    run.seed                              also seeds the data set (derived seed)
context_length          model.max_position_embeddings         at least sequence_length + 2
results_path            run.out_dir                           the run folder (a sweep sets it per job)
device                  (none)                                megaproc uses CUDA when present, else
                                                              CPU; the value is only checked
======================  ===================================  ==========================================

Dashes and underscores are interchangeable (``--results-path``/``results_path``).  A key that
already contains a dot is a megaproc key and passes through unchanged, so seed-style command
lines can add e.g. ``model.pretrained_path=/models/Qwen3-1.7B`` or ``deepspeed.config=...``.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Optional

import yaml

from megaproc.errors import ConfigError

BASE_RECIPE = "configs/classify/base.yaml"

SEED_FLAGS: dict[str, Optional[str]] = {
    "model": "model.name",
    "target_func": "classify.target_func",
    "sequence_length": "classify.sequence_length",
    "train_set_size": "classify.train_set_size",
    "test_set_size": "classify.test_set_size",
    "n_epochs": "classify.n_epochs",
    "eta_min": "classify.eta_min",
    "num_layers_to_finetune": "classify.num_layers_to_finetune",
    "vocab_size": "classify.vocab_size",
    "batch_size": "train.micro_batch",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "precision": "train.precision",
    "seed": "run.seed",
    "context_length": "model.max_position_embeddings",
    "results_path": "run.out_dir",
    "device": None,
}
DEVICES = ("cuda", "cpu")


def canonical_flag(name: str) -> str:
    """``--results-path`` / ``results-path`` -> ``results_path`` (dotted keys unchanged)."""
    name = name.lstrip("-")
    return name if "." in name else name.replace("-", "_")


def format_value(value: Any) -> str:
    """A value as override text that YAML parses back to the same value."""
    if isinstance(value, str):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
        return json.dumps(value)               # quoted: JSON strings are YAML strings
    return yaml.safe_dump(value, default_flow_style=True, width=10 ** 6).strip().removesuffix(
        "\n...").strip()


def _check_device(value: Any) -> None:
    text = str(value)
    if text.split(":")[0] not in DEVICES:
        raise ConfigError(f"seed flag 'device' must be cuda, cuda:N or cpu, got {value!r}")


def translate(args: Mapping[str, Any], raw_text: bool = False) -> list[str]:
    """Dotted ``key=value`` overrides for seed flags (or dotted keys) ``args``.

    Values are typed (from a YAML sweep file) and written so YAML reads them back unchanged;
    with ``raw_text`` they are command-line text, used verbatim (YAML then types them, as for
    any dotted override).  Raises :class:`ConfigError` naming an unknown flag; ``device`` is
    checked and dropped.
    """
    text = (lambda v: str(v)) if raw_text else format_value
    overrides = []
    for raw_key, value in args.items():
        key = canonical_flag(str(raw_key))
        if "." in key:
            overrides.append(f"{key}={text(value)}")
            continue
        if key not in SEED_FLAGS:
            raise ConfigError(f"unknown seed flag '{raw_key}' (known: {', '.join(SEED_FLAGS)}; "
                              "dotted megaproc keys such as train.max_steps pass through)")
        target = SEED_FLAGS[key]
        if target is None:
            _check_device(value)
            continue
        overrides.append(f"{target}={text(value)}")
    return overrides


def parse_flag_list(argv: Iterable[str]) -> dict[str, str]:
    """``["--lr", "1e-5", "--target_func=fn_a", "train.max_steps=3"]`` -> a mapping.

    Flags take one value (``--flag value`` or ``--flag=value``); bare ``a.b=v`` items are
    dotted megaproc keys.
    """
    items = list(argv)
    out: dict[str, str] = {}
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("--"):
            if "=" in item:
                key, value = item.split("=", 1)
            elif i + 1 < len(items) and not items[i + 1].startswith("--"):
                key, value = item, items[i + 1]
                i += 1
            else:
                raise ConfigError(f"seed flag '{item}' needs a value")
            out[canonical_flag(key)] = value
        elif "=" in item and "." in item.split("=", 1)[0]:
            key, value = item.split("=", 1)
            out[key] = value
        else:
            raise ConfigError(f"unexpected argument '{item}' (expected --flag value or a.b=value)")
        i += 1
    return out
