"""Boolean target functions and their data sets (megaproc.synthetic.boolean, boolean_data).

Every function is checked against a reference written here from the issue's description, with
other means than the implementation (numpy arrays, sympy, pair-cancellation for Dyck-2, the
rule-30 formula ``a XOR (b OR c)``, a bit unpacking of the digest).
"""

from __future__ import annotations

import hashlib
import itertools
import random

import numpy as np
import pytest
import sympy
import torch

from megaproc.synthetic import boolean, boolean_data
from megaproc.synthetic.boolean import FUNCTION_NAMES, BooleanDataError, get_function
from megaproc.synthetic.boolean_data import (derived_seed, load_or_make_splits, make_splits,
                                             read_splits, replacement_note, write_splits)


# ----------------------------------------------------------------------------- references
def bits_of(seq: str) -> np.ndarray:
    return np.frombuffer(seq.encode(), dtype=np.uint8) - ord("0")


def ref_contains(seq: str, pattern: str) -> int:
    bits, pat = bits_of(seq), bits_of(pattern)
    if len(bits) < len(pat):
        return 0
    windows = np.lib.stride_tricks.sliding_window_view(bits, len(pat))
    return int((windows == pat).all(axis=1).any())


def ref_positions(length: int, k: int) -> np.ndarray:
    return torch.randperm(length, generator=torch.Generator().manual_seed(42))[:k].numpy()


def ref_dyck2(seq: str) -> int:
    names = {"00": "(", "01": ")", "10": "[", "11": "]"}
    word = "".join(names[seq[i:i + 2]] for i in range(0, len(seq), 2))
    while "()" in word or "[]" in word:            # cancel innermost matched pairs
        word = word.replace("()", "").replace("[]", "")
    return int(word == "")


def ref_rule30_parity(seq: str) -> int:
    padded = np.concatenate([[0], bits_of(seq), [0]]).astype(bool)
    a, b, c = padded[:-2], padded[1:-1], padded[2:]
    return int((a ^ (b | c)).sum() % 2)


def ref_sha_parity(seq: str) -> int:
    digest = np.frombuffer(hashlib.sha256(seq.encode("ascii")).digest(), dtype=np.uint8)
    return int(np.unpackbits(digest).sum() % 2)


REFERENCES = {
    "fn_a": lambda s: int(bits_of(s).sum() % 2),
    "fn_b": lambda s: int(bits_of(s)[: len(s) // 2].sum() % 2),
    "fn_c": lambda s: ref_contains(s, "10101010"),
    "fn_d": lambda s: ref_contains(s, "00111111"),
    "fn_e": lambda s: int(bits_of(s)[ref_positions(len(s), 3)].sum() % 2),
    "fn_f": lambda s: int(bits_of(s)[ref_positions(len(s), 10)].sum() % 2),
    "fn_g": lambda s: int(np.array_equal(bits_of(s), bits_of(s)[::-1])),
    "fn_h": ref_dyck2,
    "fn_i": lambda s: int(sympy.isprime(int(s))),
    "fn_j": ref_rule30_parity,
    "fn_k": lambda s: int(sympy.isprime(int(s))),
    "fn_l": ref_sha_parity,
}


def random_dyck_word(rng: random.Random, pairs: int) -> str:
    """S -> ( S ) S | [ S ] S | empty, as bits (independent of the library's generator)."""
    if pairs == 0:
        return ""
    inner = rng.randrange(pairs)
    opening, closing = rng.choice([("00", "01"), ("10", "11")])
    return opening + random_dyck_word(rng, inner) + closing + random_dyck_word(rng, pairs - 1 - inner)


def random_inputs(name: str, length: int, rng: random.Random, count: int) -> list[str]:
    """Uniform inputs plus inputs of the rare label (palindromes, planted patterns, ...)."""
    if get_function(name).alphabet == boolean.DECIMAL:
        numbers = [rng.randrange(10 ** (length - 1), 10 ** length) for _ in range(count)]
        numbers += [sympy.randprime(10 ** (length - 1), 10 ** length) for _ in range(count // 4)]
        return [str(n) for n in numbers]
    out = ["".join(rng.choice("01") for _ in range(length)) for _ in range(count)]
    for _ in range(count // 4):
        half = "".join(rng.choice("01") for _ in range((length + 1) // 2))
        out.append(half + half[: length // 2][::-1])
        s = out[rng.randrange(count)]
        offset = rng.randrange(length - 7) if length >= 8 else 0
        out.append((s[:offset] + "00111111" + s[offset + 8:])[:length])
        out.append((s[:offset] + "10101010" + s[offset + 8:])[:length])
        if length % 4 == 0:
            out.append(random_dyck_word(rng, length // 4))
    return out


# ----------------------------------------------------------------------------- functions
@pytest.mark.parametrize("name", FUNCTION_NAMES)
def test_function_matches_reference(name):
    rng = random.Random(hash(name) % 1000)
    lengths = (2, 7, 20, 33) if name in ("fn_i", "fn_k") else (12, 20, 52, 100)
    labels = []
    for length in lengths:
        for seq in random_inputs(name, length, rng, 200):
            expected = REFERENCES[name](seq)
            assert get_function(name)(seq) == expected, (name, seq)
            labels.append(expected)
    assert set(labels) == {0, 1}, "the inputs must exercise both labels"


def test_known_values():
    fn = get_function
    assert fn("fn_h")("0001") == 1 and fn("fn_h")("00101101") == 1      # "()" and "([])"
    assert fn("fn_h")("0011") == 0 and fn("fn_h")("00100111") == 0      # "(]" and "([)]"
    assert fn("fn_h")("01000001") == 0                                  # ")(()"
    assert fn("fn_i")("97") == 1 and fn("fn_i")("91") == 0              # 91 = 7 * 13
    assert fn("fn_j")("11") == 1 and fn("fn_j")("101") == 0             # windows 011,110 / 010,101,010
    assert fn("fn_g")("0110") == 1 and fn("fn_g")("0100") == 0
    assert fn("fn_c")("0010101010") == 1 and fn("fn_c")("0010101000") == 0


def test_large_primes_against_sympy():
    rng = random.Random(5)
    for bits in (40, 90, 200, 330):                   # above 3.3e24 the Baillie-PSW path runs
        for _ in range(300):
            n = rng.getrandbits(bits) | 1
            assert boolean.is_prime(n) == sympy.isprime(n), n
        p = sympy.randprime(2 ** (bits - 1), 2 ** bits)
        assert boolean.is_prime(p) and not boolean.is_prime(p * sympy.nextprime(p))
        start = rng.getrandbits(bits)
        assert boolean.next_prime_at_or_after(start) == sympy.nextprime(start - 1)
    for n in (561, 3215031751, 3825123056546413051, 318665857834031151167461):  # pseudoprimes
        assert not boolean.is_prime(n)


def test_bad_inputs_are_refused():
    with pytest.raises(BooleanDataError, match="multiple of 4"):
        get_function("fn_h")("010101")
    with pytest.raises(BooleanDataError, match="outside"):
        get_function("fn_a")("0121")
    with pytest.raises(BooleanDataError, match="leading zero"):
        get_function("fn_i")("0123")
    with pytest.raises(BooleanDataError, match=">= 8"):
        get_function("fn_c")("0101010")
    with pytest.raises(BooleanDataError, match="unknown target function 'fn_z'"):
        get_function("fn_z")


@pytest.mark.parametrize("name,length", [("fn_a", 6), ("fn_b", 7), ("fn_c", 11), ("fn_d", 12),
                                         ("fn_e", 6), ("fn_f", 11), ("fn_g", 9), ("fn_h", 12),
                                         ("fn_j", 10), ("fn_l", 10)])
def test_capacity_counts_every_sequence(name, length):
    counts = [0, 0]
    for bits in itertools.product("01", repeat=length):
        counts[REFERENCES[name]("".join(bits))] += 1
    assert boolean.class_capacity(name, length) == tuple(counts)


def test_prime_capacity():
    primes = sum(1 for n in range(1000, 10000) if sympy.isprime(n))
    composites = {a * b for a in range(10, 100) for b in range(10, 100) if 1000 <= a * b < 10000}
    assert boolean.class_capacity("fn_i", 4) == (len(composites), primes)
    tails = {n for n in composites if n % 10 in (1, 3, 7, 9)}
    assert boolean.class_capacity("fn_k", 4) == (len(tails), primes)


# ----------------------------------------------------------------------------- data sets
FEASIBLE = {"fn_a": 12, "fn_b": 12, "fn_c": 16, "fn_d": 16, "fn_e": 12, "fn_f": 12,
            "fn_g": 16, "fn_h": 16, "fn_i": 6, "fn_j": 12, "fn_k": 6, "fn_l": 12}


@pytest.mark.parametrize("name", FUNCTION_NAMES)
def test_splits_balanced_unique_stratified(name):
    length = FEASIBLE[name]
    splits = make_splits(name, length, 40, 200, seed=7)
    train, test = splits.train, splits.test
    assert len(train) == 40 and len(test) == 200
    assert sum(y for _, y in train) == 20 and sum(y for _, y in test) == 100
    sequences = [s for s, _ in train + test]
    assert len(set(sequences)) == len(sequences)             # no duplicate within or across
    for seq, label in train + test:
        assert len(seq) == length and REFERENCES[name](seq) == label
    # the training split mixes the labels (it is shuffled after the stratified cut)
    assert 0 < sum(y for _, y in train[:20]) < 20
    if name == "fn_k":
        assert all(int(s[-1]) in (1, 3, 7, 9) for s, y in train + test if y == 0)
    if name in ("fn_i", "fn_k"):
        assert all(s[0] != "0" for s in sequences)


def test_deterministic_and_seeded():
    a = make_splits("fn_c", 30, 20, 20, seed=1)
    assert a == make_splits("fn_c", 30, 20, 20, seed=1)
    assert a.train != make_splits("fn_c", 30, 20, 20, seed=2).train
    base = derived_seed("fn_c", 30, 20, 20, 1)
    others = {derived_seed("fn_d", 30, 20, 20, 1), derived_seed("fn_c", 31, 20, 20, 1),
              derived_seed("fn_c", 30, 22, 20, 1), derived_seed("fn_c", 30, 20, 22, 1),
              derived_seed("fn_c", 30, 20, 20, 2)}
    assert base not in others and len(others) == 5
    assert a.derived_seed == base and 0 <= base < 2 ** 31


def test_exactly_at_capacity():
    splits = make_splits("fn_g", 8, 16, 16, seed=0)         # all 16 palindromes of length 8
    positives = {s for s, y in splits.train + splits.test if y == 1}
    assert positives == {format(i, "04b") + format(i, "04b")[::-1] for i in range(16)}


def test_more_than_exist_samples_with_replacement_keeping_train_and_test_disjoint():
    # The classification paper's fn_g at L = 20: 1,024 palindromes, 5,100 asked for.
    assert "label 1: 1024 distinct of 5100 needed" in replacement_note("fn_g", 20, 200, 10000)
    assert replacement_note("fn_g", 30, 200, 10000) is None
    splits = make_splits("fn_g", 20, 200, 10000, seed=42)
    fn = get_function("fn_g")
    for name, size in (("train", 200), ("test", 10000)):
        rows = splits.split(name)
        assert len(rows) == size and sum(y for _, y in rows) == size // 2   # still balanced
        assert all(fn.label(s) == y for s, y in rows)
    train_pos = {s for s, y in splits.train if y == 1}
    test_pos = {s for s, y in splits.test if y == 1}
    assert not train_pos & test_pos                                    # disjoint
    assert len(train_pos) + len(test_pos) == 1024                       # every palindrome used
    assert len(train_pos) == round(1024 * 100 / 5100)                  # in proportion
    negatives = [s for s, y in splits.train + splits.test if y == 0]
    assert len(set(negatives)) == len(negatives)                        # that label: distinct
    assert splits.notes == {"1": {"distinct": 1024, "train_distinct": 20, "test_distinct": 1004,
                                  "with_replacement": True}}
    assert make_splits("fn_g", 20, 200, 10000, seed=42) == splits      # deterministic


def test_impossible_requests_have_clear_errors():
    with pytest.raises(BooleanDataError, match="train_set_size must be even"):
        make_splits("fn_a", 20, 21, 10, seed=0)
    with pytest.raises(BooleanDataError, match="test_set_size must be even"):
        make_splits("fn_a", 20, 20, 11, seed=0)
    with pytest.raises(BooleanDataError, match="multiple of 4"):
        make_splits("fn_h", 30, 20, 10, seed=0)
    with pytest.raises(BooleanDataError, match="only 1 distinct sequence with label 1"):
        make_splits("fn_d", 8, 10, 2, seed=0)                # only 00111111 itself at L = 8


def test_stall_guard_when_capacity_is_not_counted(monkeypatch):
    # fn_j's labels are only counted by enumeration; without it the draw loop must notice
    # that one label runs out (length 6 has 64 sequences, not 32 of each label).
    monkeypatch.setattr(boolean, "ENUMERATE_LIMIT", 0)
    monkeypatch.setattr(boolean_data, "MAX_STALL", 2000)
    boolean.class_capacity.cache_clear()
    try:
        assert boolean.class_capacity("fn_j", 6) == (None, None)
        with pytest.raises(BooleanDataError, match=r"found only \d+ distinct sequences with label"):
            make_splits("fn_j", 6, 32, 32, seed=0)
    finally:
        boolean.class_capacity.cache_clear()


def test_files_round_trip(tmp_path):
    splits = make_splits("fn_e", 24, 10, 6, seed=3)
    write_splits(splits, tmp_path)
    assert read_splits(tmp_path) == splits
    (tmp_path / "test.jsonl").write_text('{"sequence": "0", "label": 1}\n')
    with pytest.raises(BooleanDataError, match="sha256"):
        read_splits(tmp_path)


def test_cache_reuse(tmp_path, monkeypatch):
    first = load_or_make_splits("fn_d", 24, 20, 10, seed=5, cache_dir=tmp_path)
    assert not first.from_cache
    assert first.cache_path.startswith(str(tmp_path / f"seed_{first.derived_seed}"))

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although the cache holds the data set")

    monkeypatch.setattr(boolean_data, "make_splits", fail)
    again = load_or_make_splits("fn_d", 24, 20, 10, seed=5, cache_dir=tmp_path)
    assert again.from_cache and again == first and again.cache_path == first.cache_path
    monkeypatch.setenv("MEGAPROC_CACHE", str(tmp_path / "env"))
    monkeypatch.setattr(boolean_data, "make_splits", make_splits)
    via_env = load_or_make_splits("fn_d", 24, 20, 10, seed=5)
    assert via_env == first and via_env.cache_path.startswith(str(tmp_path / "env" / "boolean"))
    other = load_or_make_splits("fn_d", 24, 20, 10, seed=6, cache_dir=tmp_path)
    assert not other.from_cache and other.train != first.train
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]     # temp dirs renamed away
