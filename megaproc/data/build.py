"""The one data entry point of the trainer: ``data`` config -> train/valid datasets.

The train dataset is always a :class:`~megaproc.data.blended.BlendedDataset`, so every sample
carries a ``source`` id even with a single corpus.  The synthetic mixin, when configured, is
one more source that receives ``mixin_percent`` of the samples (or tokens, with
``blend_by: tokens``); the real sources share the rest in proportion to their weights.
"""

from __future__ import annotations

import math
import os

from megaproc.data.blended import BlendedDataset, normalize_weights, sample_weights
from megaproc.data.gpt_dataset import GPTDataset, split_documents
from megaproc.data.indexed import IndexedDataset
from megaproc.data.mixin import JsonlTaskDataset

MIXIN_NAME = "mixin"
_MARGIN = 1.005  # extra samples per source beyond its exact share (plus a few), as Megatron


def _field(cfg, name: str, default=None):
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def parse_sources(entries, key: str) -> list[tuple[str, float]]:
    """``(prefix, weight)`` pairs from plain prefix strings or ``{prefix, weight}`` entries."""
    out = []
    for i, entry in enumerate(entries or []):
        if isinstance(entry, (str, os.PathLike)):
            prefix, weight = str(entry), 1.0
        else:
            prefix, weight = _field(entry, "prefix"), _field(entry, "weight", 1.0)
        if not prefix:
            raise ValueError(f"{key}[{i}]: missing 'prefix'")
        if weight is None or not float(weight) >= 0:
            raise ValueError(f"{key}[{i}]: weight must be a non-negative number, got {weight!r}")
        out.append((str(prefix), float(weight)))
    return out


def open_indexed(prefix: str, key: str) -> IndexedDataset:
    """Open ``prefix``; a missing pair is a one-line ``FileNotFoundError`` naming it."""
    if not IndexedDataset.exists(prefix):
        raise FileNotFoundError(f"{key}: indexed data prefix not found: {prefix} "
                                f"(expected {prefix}.bin and {prefix}.idx)")
    return IndexedDataset(prefix)


def source_names(prefixes: list[str]) -> list[str]:
    """Basename of each prefix, made unique with ``_2``, ``_3``... suffixes."""
    names, seen = [], {}
    for prefix in prefixes:
        base = os.path.basename(os.path.normpath(prefix)) or prefix
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def samples_needed(share: float, total: int) -> int:
    """Samples to build for a source getting ``share`` of ``total`` (with a safety margin;
    the blend wraps around a source anyway, so the margin only avoids early repeats)."""
    return int(math.ceil(share * total * _MARGIN)) + 8 if share > 0 else 1


def build_mixin(path: str, tokenizer, seq_len: int, seed: int, num_samples: int, cache_dir):
    """The mixin source: a ``.jsonl`` of prompt/answer examples or an indexed prefix."""
    if IndexedDataset.exists(path):
        return GPTDataset(IndexedDataset(path), seq_len, num_samples, seed, cache_dir=cache_dir,
                          name=MIXIN_NAME)
    if os.path.isfile(path):
        return JsonlTaskDataset(path, tokenizer, seq_len, seed=seed, num_samples=num_samples,
                                name=MIXIN_NAME)
    raise FileNotFoundError(f"data.mixin: not found: {path} (expected a .jsonl file or an "
                            "indexed prefix with .bin/.idx)")


def build_train_valid(data_cfg, tokenizer, seq_len: int, seed: int, train_samples: int,
                      valid_samples: int):
    """Build ``(train_dataset, valid_dataset_or_None, source_names)`` from ``data_cfg``.

    ``data_cfg`` fields: ``train`` and ``valid`` (lists of prefixes or ``{prefix, weight}``),
    ``valid_fraction`` (documents held out of each train prefix when ``valid`` is empty),
    ``blend_by`` (``"samples"``/``"tokens"``), ``mixin`` and ``mixin_percent``, ``cache_dir``.
    The train blend has exactly ``train_samples`` samples; the valid blend (no mixin)
    ``valid_samples``.  Source names are the prefix basenames, then ``"mixin"``.
    """
    train_sources = parse_sources(_field(data_cfg, "train"), "data.train")
    if not train_sources:
        raise ValueError("data.train: no training prefixes given")
    valid_sources = parse_sources(_field(data_cfg, "valid"), "data.valid")
    blend_by = _field(data_cfg, "blend_by", "samples") or "samples"
    if blend_by not in ("samples", "tokens"):
        raise ValueError(f"data.blend_by must be 'samples' or 'tokens', got {blend_by!r}")
    cache_dir = _field(data_cfg, "cache_dir")
    mixin = _field(data_cfg, "mixin")
    mixin_percent = float(_field(data_cfg, "mixin_percent", 0.0) or 0.0)
    if not 0.0 <= mixin_percent < 1.0:
        raise ValueError(f"data.mixin_percent must be in [0, 1), got {mixin_percent}")
    if mixin_percent > 0 and not mixin:
        raise ValueError("data.mixin must be set when data.mixin_percent > 0")
    use_mixin = bool(mixin) and mixin_percent > 0

    train_indexed = [open_indexed(p, f"data.train[{i}]") for i, (p, _) in enumerate(train_sources)]
    valid_indexed = [open_indexed(p, f"data.valid[{i}]") for i, (p, _) in enumerate(valid_sources)]
    names = source_names([p for p, _ in train_sources])
    real = normalize_weights([w for _, w in train_sources]) * (1.0 - mixin_percent)
    weights = list(real) + ([mixin_percent] if use_mixin else [])

    train_ranges, valid_ranges = [None] * len(train_indexed), []
    valid_fraction = float(_field(data_cfg, "valid_fraction", 0.0) or 0.0)
    if not valid_sources and valid_fraction > 0:
        splits = []
        for ix in train_indexed:
            try:
                splits.append(split_documents(ix.num_documents, valid_fraction))
            except ValueError as exc:
                raise ValueError(f"data.valid_fraction: {ix.path_prefix}: {exc}") from None
        train_ranges = [s[0] for s in splits]
        valid_ranges = [s[1] for s in splits]

    sample_length = seq_len + 1
    mixin_ds = None
    if use_mixin:
        mixin_ds = build_mixin(str(mixin), tokenizer, seq_len, seed,
                               samples_needed(mixin_percent, train_samples), cache_dir)
        names.append(MIXIN_NAME)
    tokens = None
    if blend_by == "tokens":
        tokens = [float(sample_length)] * len(train_indexed)
        if mixin_ds is not None:
            tokens.append(mixin_ds.mean_tokens_per_sample())
    shares = sample_weights(weights, tokens)
    sources = [
        GPTDataset(ix, seq_len, samples_needed(shares[j], train_samples), seed,
                   document_range=train_ranges[j], cache_dir=cache_dir, name="train")
        for j, ix in enumerate(train_indexed)
    ]
    if mixin_ds is not None:
        sources.append(mixin_ds)
    train = BlendedDataset(sources, weights, train_samples, by=blend_by, seed=seed,
                           cache_dir=cache_dir, names=names)

    valid = None
    if valid_samples > 0 and (valid_sources or valid_ranges):
        if valid_sources:
            v_indexed, v_ranges = valid_indexed, [None] * len(valid_indexed)
            v_weights = normalize_weights([w for _, w in valid_sources])
            v_names = source_names([p for p, _ in valid_sources])
        else:
            v_indexed, v_ranges = train_indexed, valid_ranges
            v_weights = normalize_weights([w for _, w in train_sources])
            v_names = names[:len(train_indexed)]
        v_sets = [GPTDataset(ix, seq_len, samples_needed(v_weights[j], valid_samples), seed,
                             document_range=v_ranges[j], cache_dir=cache_dir, name="valid")
                  for j, ix in enumerate(v_indexed)]
        valid = BlendedDataset(v_sets, list(v_weights), valid_samples, by=blend_by, seed=seed,
                               cache_dir=cache_dir, names=v_names)
    return train, valid, names
