"""Balanced train/test data sets of the boolean target functions (:mod:`.boolean`).

Construction
    One pool of ``train_set_size + test_set_size`` distinct sequences, exactly half of each
    label, is drawn with one ``random.Random(derived_seed)`` (CPython's Mersenne Twister, stable
    across 3.x); every candidate is labelled by the target function itself, so a sequence's
    label is always the function's value.  How candidates are drawn:

    - parities, fn_j and fn_l: uniform random sequences fill both labels;
    - fn_c/fn_d: positives are uniform sequences with the pattern written over them at a
      uniform offset; negatives are uniform sequences without it;
    - fn_g: positives mirror a uniform first half; negatives are uniform non-palindromes;
    - fn_h: positives are random Dyck-2 words (a random walk that opens with probability 1/2
      while it may, bracket types uniform); negatives are such words with 1 to 5 distinct bits
      flipped, re-checked and kept only if no longer valid;
    - fn_i/fn_k: positives are the next prime at or after a uniform ``L``-digit start (redrawn
      when it has ``L + 1`` digits); negatives are products of a uniform ``L // 2``-digit and
      ``L - L // 2``-digit factor (both >= 2, so every product is composite) with exactly ``L``
      digits; for fn_k only products ending in 1, 3, 7 or 9 are kept.

    The pool is then split stratified: each label is shuffled, the first half of the train size
    of each goes to train, the rest to test, and each split is shuffled.

More than exist (e.g. fn_g at L = 20: 1,024 palindromes, 5,100 asked for)
    When a label has fewer distinct sequences (``class_capacity``, counted exactly) than half of
    train + test, as the group's script did the splits repeat sequences: all distinct sequences
    of that label are drawn, shuffled and divided between train and test in proportion to their
    sizes (so train and test stay disjoint), and each split uses every sequence of its part
    once, then draws the rest from that part with replacement.  :func:`replacement_note` says
    so in one line (the run warns) and ``BooleanSplits.notes`` records it (``meta.json``, the
    run's ``metrics.json``).

Errors (:class:`~megaproc.synthetic.boolean.BooleanDataError`, one line)
    An unknown function, a length the function is not defined at, an odd or non-positive train
    size, an odd test size, and a construction that stops finding new sequences (``MAX_STALL``
    draws in a row without a new one, where the capacity is not counted).

Determinism and cache
    ``derived_seed`` hashes ``(function, length, sizes, global seed)``, so the data depend on
    nothing else.  :func:`load_or_make_splits` keeps the files under
    ``ROOT/seed_<derived_seed>/<key hash>/`` (``ROOT`` = ``classify.cache_dir``, else
    ``$MEGAPROC_CACHE/boolean``, default ``~/.cache/megaproc/boolean``), written to a temporary
    directory and renamed into place, so reruns (and other ranks) read identical data.

Files (also what ``python -m data_tools.build_boolean`` writes)
    ``train.jsonl`` and ``test.jsonl`` with one ``{"sequence": "0110...", "label": 0|1}`` per
    line, and ``meta.json`` (parameters, counts per label, sha256 of both files).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from megaproc.files import atomic_write_text, cache_root
from megaproc.synthetic.boolean import (PATTERNS, BooleanDataError, class_capacity, get_function,
                                        next_prime_at_or_after)

GENERATOR_VERSION = 1
META_FORMAT_VERSION = 1
MAX_STALL = 50_000          # draws in a row without a new sequence before giving up
MAX_FLIPS = 5               # Dyck-2 negatives flip 1..MAX_FLIPS bits of a valid word
PRIME_TAILS = (1, 3, 7, 9)  # last digits of fn_k's composites
SPLITS = ("train", "test")


@dataclass(frozen=True)
class BooleanSplits:
    """A train and a test split of ``(sequence, label)`` pairs and how they were made."""

    target_func: str
    sequence_length: int
    seed: int
    derived_seed: int
    train: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]
    # Where the files live when they came from (or went to) the cache; not part of equality.
    cache_path: Optional[str] = field(default=None, compare=False)
    from_cache: bool = field(default=False, compare=False)
    # How labels with fewer distinct sequences than asked for were drawn (empty: all distinct).
    notes: dict = field(default_factory=dict, compare=False)

    def split(self, name: str) -> tuple[tuple[str, int], ...]:
        """``train`` or ``test``."""
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r} (valid: {', '.join(SPLITS)})")
        return getattr(self, name)

    def meta(self) -> dict:
        """Parameters and per-label counts (``meta.json`` without the file hashes)."""
        counts = {name: {str(label): sum(1 for _, y in self.split(name) if y == label)
                         for label in (0, 1)} for name in SPLITS}
        return {"format_version": META_FORMAT_VERSION, "generator_version": GENERATOR_VERSION,
                "target_func": self.target_func,
                "seed_name": get_function(self.target_func).seed_name,
                "sequence_length": self.sequence_length, "train_set_size": len(self.train),
                "test_set_size": len(self.test), "seed": self.seed,
                "derived_seed": self.derived_seed, "counts": counts, "notes": self.notes}


# ----------------------------------------------------------------------------- seeds
def _key(target_func: str, length: int, train_size: int, test_size: int, seed: int) -> str:
    return f"{target_func}|L={length}|train={train_size}|test={test_size}|base_seed={seed}"


def derived_seed(target_func: str, length: int, train_size: int, test_size: int,
                 seed: int) -> int:
    """31-bit seed of one data set: a hash of ``(function, length, sizes, global seed)``."""
    digest = hashlib.sha256(_key(target_func, length, train_size, test_size, seed).encode())
    return int.from_bytes(digest.digest()[:8], "big") & 0x7FFFFFFF


def cache_subdir(target_func: str, length: int, train_size: int, test_size: int,
                 seed: int) -> str:
    """``seed_<derived>/<hash>``: the cache folder of one data set (the hash also covers the
    generator version, so a changed construction never reads old files)."""
    key = _key(target_func, length, train_size, test_size, seed) + f"|v{GENERATOR_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(f"seed_{derived_seed(target_func, length, train_size, test_size, seed)}",
                        digest)


def default_cache_root() -> Path:
    """``$MEGAPROC_CACHE/boolean`` (default ``~/.cache/megaproc/boolean``)."""
    return cache_root() / "boolean"


# ----------------------------------------------------------------------------- drawing
Draw = Callable[[random.Random], Optional[str]]


def _uniform(length: int) -> Draw:
    def draw(rng: random.Random) -> str:
        return format(rng.getrandbits(length), f"0{length}b")
    return draw


def _with_pattern(length: int, pattern: str) -> Draw:
    def draw(rng: random.Random) -> str:
        seq = format(rng.getrandbits(length), f"0{length}b")
        offset = rng.randrange(length - len(pattern) + 1)
        return seq[:offset] + pattern + seq[offset + len(pattern):]
    return draw


def _palindrome(length: int) -> Draw:
    half = (length + 1) // 2

    def draw(rng: random.Random) -> str:
        first = format(rng.getrandbits(half), f"0{half}b")
        return first + first[: length // 2][::-1]
    return draw


def _dyck_word(rng: random.Random, length: int) -> str:
    """Bits of a random Dyck-2 word of ``length // 2`` brackets."""
    brackets = length // 2
    stack: list[str] = []
    bits = []
    for position in range(brackets):
        remaining = brackets - position
        may_open = len(stack) + 1 <= remaining - 1
        if may_open and (not stack or rng.random() < 0.5):
            kind = rng.choice(("00", "10"))          # "(" or "["
            stack.append(kind)
            bits.append(kind)
        else:
            bits.append(stack.pop()[0] + "1")        # ")" closes "(", "]" closes "["
    return "".join(bits)


def _dyck_valid(length: int) -> Draw:
    return lambda rng: _dyck_word(rng, length)


def _dyck_corrupted(length: int) -> Draw:
    def draw(rng: random.Random) -> str:
        bits = list(_dyck_word(rng, length))
        for i in rng.sample(range(length), rng.randint(1, min(MAX_FLIPS, length))):
            bits[i] = "1" if bits[i] == "0" else "0"
        return "".join(bits)
    return draw


def _next_prime(length: int) -> Draw:
    lo, hi = 10 ** (length - 1), 10 ** length

    def draw(rng: random.Random) -> Optional[str]:
        prime = next_prime_at_or_after(rng.randrange(lo, hi))
        return str(prime) if prime < hi else None
    return draw


def _composite(length: int, tails: Optional[tuple[int, ...]]) -> Draw:
    a_len = length // 2
    b_len = length - a_len
    lo, hi = 10 ** (length - 1), 10 ** length
    a_range = (max(2, 10 ** (a_len - 1)), 10 ** a_len)
    b_range = (max(2, 10 ** (b_len - 1)), 10 ** b_len)

    def draw(rng: random.Random) -> Optional[str]:
        n = rng.randrange(*a_range) * rng.randrange(*b_range)
        if lo <= n < hi and (tails is None or n % 10 in tails):
            return str(n)
        return None
    return draw


def _draws(target_func: str, length: int) -> list[tuple[tuple[int, ...], Draw]]:
    """``(labels it fills, draw)`` in the order they are used."""
    if target_func in PATTERNS:
        pattern = PATTERNS[target_func]
        return [((1,), _with_pattern(length, pattern)), ((0,), _uniform(length))]
    if target_func == "fn_g":
        return [((1,), _palindrome(length)), ((0,), _uniform(length))]
    if target_func == "fn_h":
        return [((1,), _dyck_valid(length)), ((0,), _dyck_corrupted(length))]
    if target_func in ("fn_i", "fn_k"):
        tails = PRIME_TAILS if target_func == "fn_k" else None
        return [((1,), _next_prime(length)), ((0,), _composite(length, tails))]
    return [((0, 1), _uniform(length))]


# ----------------------------------------------------------------------------- the pool
def check_request(target_func: str, length: int, train_size: int, test_size: int) -> None:
    """Raise :class:`BooleanDataError` for a data set that cannot be made (cheap: no drawing;
    a construction whose capacity is not counted can still stall in :func:`make_pool`)."""
    fn = get_function(target_func)
    fn.check_length(length)
    for name, size in (("train_set_size", train_size), ("test_set_size", test_size)):
        if not isinstance(size, int) or isinstance(size, bool):
            raise BooleanDataError(f"{name} must be an int, got {size!r}")
        if size % 2:
            raise BooleanDataError(f"{name} must be even for an exact 50/50 split, got {size}")
    if train_size <= 0:
        raise BooleanDataError(f"train_set_size must be > 0, got {train_size}")
    if test_size < 0:
        raise BooleanDataError(f"test_set_size must be >= 0, got {test_size}")
    for label, capacity in short_labels(target_func, length, train_size, test_size).items():
        if capacity < 2 and train_size and test_size:
            raise BooleanDataError(
                f"{target_func} ({fn.seed_name}) at sequence length {length}: only {capacity} "
                f"distinct sequence with label {label} exists; train and test cannot be disjoint")


def short_labels(target_func: str, length: int, train_size: int, test_size: int) -> dict[int, int]:
    """``{label: distinct sequences}`` for the labels with fewer distinct sequences than half of
    train + test (those are drawn with replacement, see the module docstring)."""
    per_label = (train_size + test_size) // 2
    return {label: capacity for label, capacity in enumerate(class_capacity(target_func, length))
            if capacity is not None and capacity < per_label}


def replacement_note(target_func: str, length: int, train_size: int,
                     test_size: int) -> str | None:
    """One line saying which labels repeat sequences (None when every sequence is distinct)."""
    short = short_labels(target_func, length, train_size, test_size)
    if not short:
        return None
    per_label = (train_size + test_size) // 2
    parts = ", ".join(f"label {label}: {capacity} distinct of {per_label} needed"
                      for label, capacity in sorted(short.items()))
    return (f"{target_func} at sequence length {length} has fewer distinct sequences "
            f"than asked for ({parts}); those labels are sampled with replacement, train and "
            "test kept disjoint")


def make_pool(target_func: str, length: int, size: int, rng: random.Random,
              wanted: dict[int, int] | None = None) -> dict[int, list[str]]:
    """``{0: [...], 1: [...]}``: ``size // 2`` distinct sequences of each label (``wanted[label]``
    where given), in draw order.

    Sizes are not checked here (see :func:`make_splits`) but a construction that stops finding
    new sequences raises :class:`BooleanDataError`.
    """
    fn = get_function(target_func)
    target = {label: (wanted or {}).get(label, size // 2) for label in (0, 1)}
    pool: dict[int, list[str]] = {0: [], 1: []}
    seen: set[str] = set()
    for labels, draw in _draws(target_func, length):
        stall = 0
        while any(len(pool[label]) < target[label] for label in labels):
            seq = draw(rng)
            label = fn.label(seq) if seq is not None else -1
            if label in labels and len(pool[label]) < target[label] and seq not in seen:
                seen.add(seq)
                pool[label].append(seq)
                stall = 0
                continue
            stall += 1
            if stall > MAX_STALL:
                short = [lab for lab in labels if len(pool[lab]) < target[lab]]
                raise BooleanDataError(
                    f"{target_func} ({fn.seed_name}) at sequence length {length}: found only "
                    f"{len(pool[short[0]])} distinct sequences with label {short[0]} of "
                    f"{target[short[0]]} needed (no new one in {MAX_STALL} draws); use a longer "
                    "sequence or smaller sets")
    return pool


def make_splits(target_func: str, sequence_length: int, train_set_size: int,
                test_set_size: int, seed: int) -> BooleanSplits:
    """Generate the balanced, duplicate-free train and test splits (see the module docstring)."""
    check_request(target_func, sequence_length, train_set_size, test_set_size)
    dseed = derived_seed(target_func, sequence_length, train_set_size, test_set_size, seed)
    rng = random.Random(dseed)
    short = short_labels(target_func, sequence_length, train_set_size, test_set_size)
    pool = make_pool(target_func, sequence_length, train_set_size + test_set_size, rng, short)
    half, test_half = train_set_size // 2, test_set_size // 2
    train, test, notes = [], [], {}
    for label in (0, 1):
        sequences = pool[label]
        rng.shuffle(sequences)
        if label not in short:
            train += [(s, label) for s in sequences[:half]]
            test += [(s, label) for s in sequences[half:]]
            continue
        # Fewer distinct sequences than asked for: disjoint parts in proportion to the sizes,
        # each used once and then drawn from with replacement.
        cut = round(len(sequences) * half / (half + test_half))
        cut = min(max(cut, 1), len(sequences) - 1) if test_half else len(sequences)
        for target, part, size in ((train, sequences[:cut], half),
                                   (test, sequences[cut:], test_half)):
            chosen = part[:size] + [rng.choice(part) for _ in range(size - len(part[:size]))]
            target += [(s, label) for s in chosen]
        notes[str(label)] = {"distinct": len(sequences), "train_distinct": cut,
                             "test_distinct": len(sequences) - cut, "with_replacement": True}
    rng.shuffle(train)
    rng.shuffle(test)
    return BooleanSplits(target_func, sequence_length, seed, dseed, tuple(train), tuple(test),
                         notes=notes)


# ----------------------------------------------------------------------------- files
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_splits(splits: BooleanSplits, directory: str | os.PathLike) -> Path:
    """Write ``train.jsonl``, ``test.jsonl`` and (last) ``meta.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = splits.meta()
    meta["files"], meta["sha256"] = {}, {}
    for name in SPLITS:
        lines = "".join(json.dumps({"sequence": s, "label": y}, separators=(", ", ": ")) + "\n"
                        for s, y in splits.split(name))
        path = directory / f"{name}.jsonl"
        atomic_write_text(path, lines)
        meta["files"][name] = path.name
        meta["sha256"][name] = _sha256(path)
    atomic_write_text(directory / "meta.json", json.dumps(meta, indent=2) + "\n")
    return directory


def read_splits(directory: str | os.PathLike, verify: bool = True) -> BooleanSplits:
    """Read a directory written by :func:`write_splits` (checking the file hashes)."""
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{directory}: no meta.json (not a boolean data set)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    rows = {}
    for name in SPLITS:
        path = directory / meta["files"][name]
        if verify and _sha256(path) != meta["sha256"][name]:
            raise BooleanDataError(f"{path}: contents do not match the sha256 in meta.json")
        with open(path, encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        rows[name] = tuple((r["sequence"], int(r["label"])) for r in records)
    return BooleanSplits(meta["target_func"], int(meta["sequence_length"]), int(meta["seed"]),
                         int(meta["derived_seed"]), rows["train"], rows["test"],
                         notes=meta.get("notes") or {})


def load_or_make_splits(target_func: str, sequence_length: int, train_set_size: int,
                        test_set_size: int, seed: int,
                        cache_dir: str | os.PathLike | None = None,
                        log: Callable[[str], None] | None = None) -> BooleanSplits:
    """The splits of these parameters from the cache, generated and cached on first use.

    A complete cache entry (``meta.json`` present, parameters and hashes matching) is read
    back; otherwise the data are generated, written to a temporary folder and renamed into
    place.  When several processes race, the first rename wins and the others read it.
    """
    check_request(target_func, sequence_length, train_set_size, test_set_size)
    note = replacement_note(target_func, sequence_length, train_set_size, test_set_size)
    if note and log is not None:
        log(f"warning: {note}")
    root = Path(cache_dir) if cache_dir else default_cache_root()
    final = root / cache_subdir(target_func, sequence_length, train_set_size, test_set_size,
                                seed)
    wanted = (target_func, sequence_length, seed, train_set_size, test_set_size)
    if (final / "meta.json").is_file():
        cached = read_splits(final)
        got = (cached.target_func, cached.sequence_length, cached.seed, len(cached.train),
               len(cached.test))
        if got != wanted:
            raise BooleanDataError(f"cache entry {final} holds another data set ({got}); "
                                   "remove it")
        return _located(cached, final, from_cache=True)
    splits = make_splits(target_func, sequence_length, train_set_size, test_set_size, seed)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    write_splits(splits, temp)
    try:
        os.rename(temp, final)
    except OSError:                        # another process published it first: same data
        shutil.rmtree(temp, ignore_errors=True)
        if not (final / "meta.json").is_file():
            raise
    return _located(splits, final, from_cache=False)


def _located(splits: BooleanSplits, path: Path, from_cache: bool) -> BooleanSplits:
    return BooleanSplits(splits.target_func, splits.sequence_length, splits.seed,
                         splits.derived_seed, splits.train, splits.test,
                         cache_path=str(path), from_cache=from_cache, notes=splits.notes)
