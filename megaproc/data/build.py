"""The one data entry point of the trainer: ``data`` config -> train/valid datasets.

The train dataset is always a :class:`~megaproc.data.blended.BlendedDataset`, so every sample
carries a ``source`` id even with a single corpus.  The synthetic mixin, when configured, is
one more source that receives ``mixin_percent`` of the samples (or tokens, with
``blend_by: tokens``); the real sources share the rest in proportion to their weights.

Every source is sized by the share of *samples* it actually gets in the blend (with token
weighting a short-example mixin gets more samples than ``mixin_percent``), so no source wraps
around before the blend ends.  Since each source's order and the blend assignment depend only
on the seed and the data, the datasets built for ``N`` and for ``2N`` train samples serve the
same first ``N`` samples: a longer plan on resume continues the data order.
"""

from __future__ import annotations

import math
import os

from megaproc.config import data_config, data_sources
from megaproc.data.blended import BlendedDataset, normalize_weights, sample_weights
from megaproc.data.gpt_dataset import GPTDataset, split_documents
from megaproc.data.indexed import IndexedDataset
from megaproc.data.prompt_answer import PromptAnswerDataset

MIXIN_NAME = "mixin"
_MARGIN = 1.005  # extra samples per source beyond its exact share (plus a few), as Megatron


def is_prompt_answer_file(path: str) -> bool:
    """A ``.jsonl``/``.jsonl.gz`` path is a prompt/answer file; anything else an indexed prefix."""
    return str(path).endswith((".jsonl", ".jsonl.gz"))


def open_indexed(prefix: str, key: str) -> IndexedDataset:
    """Open ``prefix``; a missing pair is a one-line ``FileNotFoundError`` naming it."""
    if not IndexedDataset.exists(prefix):
        raise FileNotFoundError(f"{key}: indexed data prefix not found: {prefix} "
                                f"(expected {prefix}.bin and {prefix}.idx)")
    return IndexedDataset(prefix)


def source_names(sources) -> list[str]:
    """Each source's ``name``, else the basename of its prefix, made unique with ``_2``,
    ``_3``... suffixes."""
    names, seen = [], {}
    for source in sources:
        base = source.name or os.path.basename(os.path.normpath(source.prefix)) or source.prefix
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def samples_needed(share: float, total: int) -> int:
    """Samples to build for a source getting ``share`` of the samples of a ``total``-sample blend.

    The blend rule gives source ``j`` fewer than ``share * n + 1`` of the first ``n`` samples
    (it only picks a source whose score ``share * (n + 1) - count`` is positive), so
    ``floor(share * total) + 1`` always suffice; the margin on top is Megatron's habit.
    ``share`` must be the source's fraction of *samples* (see :func:`sample_weights`).
    """
    return int(math.ceil(share * total * _MARGIN)) + 8 if share > 0 else 1


def build_mixin(path: str, tokenizer, seq_len: int, seed: int, cache_dir, samples_for):
    """The mixin source: a ``.jsonl`` of prompt/answer examples or an indexed prefix.

    ``samples_for(tokens_per_sample)`` gives the number of samples the mixin must provide; it
    is called with the mixin's mean sample length once that is known (after scanning a
    ``.jsonl``), since with token weighting the sample share depends on it.
    """
    if IndexedDataset.exists(path):
        return GPTDataset(IndexedDataset(path), seq_len, samples_for(seq_len + 1), seed,
                          cache_dir=cache_dir, name=MIXIN_NAME)
    if os.path.isfile(path):
        examples = PromptAnswerDataset(path, tokenizer, seq_len, seed=seed, name=MIXIN_NAME)
        return examples.resized(samples_for(examples.mean_tokens_per_sample()))
    raise FileNotFoundError(f"data.mixin: not found: {path} (expected a .jsonl file or an "
                            "indexed prefix with .bin/.idx)")


def open_source(path: str, key: str, tokenizer, seq_len: int, seed: int):
    """A blend source: an indexed prefix (``IndexedDataset``) or a prompt/answer ``.jsonl``
    (``PromptAnswerDataset``, e.g. DeepMind Mathematics converted by ``data_tools.deepmind_math``,
    trained with ``train.loss: answer_only``)."""
    if is_prompt_answer_file(path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{key}: prompt/answer file not found: {path}")
        return PromptAnswerDataset(path, tokenizer, seq_len, seed=seed, name=os.path.basename(path))
    return open_indexed(path, key)


def sized_source(source, seq_len: int, num_samples: int, seed: int, document_range, cache_dir,
                 name: str):
    """``num_samples`` samples of an opened source (GPT samples of a document range of an
    indexed prefix, or passes over a ``.jsonl``'s examples)."""
    if isinstance(source, PromptAnswerDataset):
        return source.resized(num_samples)
    return GPTDataset(source, seq_len, num_samples, seed, document_range=document_range,
                      cache_dir=cache_dir, name=name)


def _check_no_wrap(blend: BlendedDataset) -> None:
    """Raise if a source of ``blend`` is shorter than the samples the blend takes from it
    (it would wrap around and repeat its first samples; a sizing bug, never expected)."""
    counts = blend.source_counts(len(blend))
    for name, count, source in zip(blend.source_names, counts, blend.datasets):
        if count > len(source):
            raise RuntimeError(f"blend source {name!r} has {len(source)} samples but the blend "
                               f"takes {count}: it would wrap around")


def build_train_valid(data_cfg, tokenizer, seq_len: int, seed: int, train_samples: int,
                      valid_samples: int):
    """Build ``(train_dataset, valid_dataset_or_None, source_names)`` from ``data_cfg``.

    ``data_cfg`` is a validated, resolved ``data`` section (:class:`megaproc.config.DataConfig`
    whose ``train``/``valid`` are typed :class:`~megaproc.config.DataSourceConfig` entries, see
    :func:`megaproc.runs.resolve`): ``train`` and ``valid`` (a prefix ending in ``.jsonl`` is a
    prompt/answer file, see :func:`open_source`), ``valid_fraction`` (documents held out of
    each train prefix when ``valid`` is empty), ``blend_by``, ``mixin`` and ``mixin_percent``,
    ``cache_dir``.  The train blend has exactly ``train_samples`` samples; the valid blend (no
    mixin) ``valid_samples``.  Source names are the sources' names (default: the prefix
    basenames), then ``"mixin"``.
    """
    data_cfg = data_config(data_cfg)
    train_sources = data_sources(data_cfg.train, "data.train")
    if not train_sources:
        raise ValueError("data.train: no training sources (resolve the config first)")
    valid_sources = data_sources(data_cfg.valid, "data.valid")
    blend_by, cache_dir = data_cfg.blend_by, data_cfg.cache_dir
    mixin, mixin_percent = data_cfg.mixin, float(data_cfg.mixin_percent)
    use_mixin = bool(mixin) and mixin_percent > 0

    train_opened = [open_source(s.prefix, f"data.train[{i}]", tokenizer, seq_len, seed)
                    for i, s in enumerate(train_sources)]
    valid_opened = [open_source(s.prefix, f"data.valid[{i}]", tokenizer, seq_len, seed)
                    for i, s in enumerate(valid_sources)]
    names = source_names(train_sources)
    real = normalize_weights([s.weight for s in train_sources]) * (1.0 - mixin_percent)
    weights = list(real) + ([mixin_percent] if use_mixin else [])

    train_ranges, valid_ranges = [None] * len(train_opened), []
    valid_fraction = float(data_cfg.valid_fraction)
    if not valid_sources and valid_fraction > 0:
        # Held-out document ranges of the indexed sources; a .jsonl source holds none out
        # (give data.valid for it).
        for j, ix in enumerate(train_opened):
            if isinstance(ix, PromptAnswerDataset):
                valid_ranges.append(None)
                continue
            try:
                train_ranges[j], held_out = split_documents(ix.num_documents, valid_fraction)
            except ValueError as exc:
                raise ValueError(f"data.valid_fraction: {ix.path_prefix}: {exc}") from None
            valid_ranges.append(held_out)

    sample_length = seq_len + 1  # GPTDataset samples carry the extra label token

    def tokens_per_sample(source) -> float:
        return source.mean_tokens_per_sample() if isinstance(source, PromptAnswerDataset) \
            else float(sample_length)

    def sample_shares(mixin_tokens: float | None = None):
        """Each source's fraction of the samples (differs from ``weights`` by tokens)."""
        if blend_by != "tokens":
            return sample_weights(weights)
        tokens = [tokens_per_sample(src) for src in train_opened]
        return sample_weights(weights, tokens + ([mixin_tokens] if use_mixin else []))

    mixin_ds = None
    if use_mixin:
        mixin_ds = build_mixin(str(mixin), tokenizer, seq_len, seed, cache_dir,
                               lambda t: samples_needed(sample_shares(t)[-1], train_samples))
        names.append(MIXIN_NAME)
    shares = sample_shares(mixin_ds.mean_tokens_per_sample() if mixin_ds is not None else None)
    sources = [sized_source(ix, seq_len, samples_needed(shares[j], train_samples), seed,
                            train_ranges[j], cache_dir, "train")
               for j, ix in enumerate(train_opened)]
    if mixin_ds is not None:
        sources.append(mixin_ds)
    train = BlendedDataset(sources, weights, train_samples, by=blend_by, seed=seed,
                           cache_dir=cache_dir, names=names)
    _check_no_wrap(train)

    valid = None
    if valid_sources:
        v_opened, v_ranges = valid_opened, [None] * len(valid_opened)
        v_weights = normalize_weights([s.weight for s in valid_sources])
        v_names = source_names(valid_sources)
    else:
        kept = [j for j, r in enumerate(valid_ranges) if r is not None]
        v_opened, v_ranges = [train_opened[j] for j in kept], [valid_ranges[j] for j in kept]
        v_weights = normalize_weights([train_sources[j].weight for j in kept]) if kept else []
        v_names = [names[j] for j in kept]
    if valid_samples > 0 and v_opened:
        v_sets = [sized_source(ix, seq_len, samples_needed(v_weights[j], valid_samples), seed,
                               v_ranges[j], cache_dir, "valid")
                  for j, ix in enumerate(v_opened)]
        valid = BlendedDataset(v_sets, list(v_weights), valid_samples, by=blend_by, seed=seed,
                               cache_dir=cache_dir, names=v_names)
        _check_no_wrap(valid)
    return train, valid, names
