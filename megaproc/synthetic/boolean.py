"""The twelve target functions of the sequence-classification track (``fn_a`` ... ``fn_l``).

A *sequence* is a string of ``L`` symbols: ``"0"``/``"1"`` for the binary functions and the
decimal digits for the prime tasks ``fn_i``/``fn_k``.  Every function maps a sequence to a
label 0 or 1:

========  ===================  ===========================================================
name      seed name            label = 1 iff ...
========  ===================  ===========================================================
fn_a      parity_all           the number of 1s is odd
fn_b      parity_first_half    the number of 1s among the first ``L // 2`` bits is odd
fn_c      patternmatch1        the sequence contains ``10101010``
fn_d      patternmatch2        the sequence contains ``00111111``
fn_e      parity_rand_3        odd number of 1s at 3 fixed positions (below)
fn_f      parity_rand_10       odd number of 1s at 10 fixed positions (below)
fn_g      palindrome           the sequence reads the same backwards
fn_h      dyck2                bit pairs ``00 ( 01 ) 10 [ 11 ]`` form a balanced, properly
                               nested Dyck-2 word (``L`` a multiple of 4)
fn_i      prime_decimal        the ``L``-digit decimal number is prime
fn_j      automata_parity      one 0 is padded on each side, elementary rule 30 maps every
                               width-3 window ``abc`` to ``[0,1,1,1,1,0,0,0][4a + 2b + c]``,
                               and the ``L`` results have odd parity
fn_k      prime_decimal_tf_    prime, as fn_i (its data set differs: negatives are
          check                composites ending in 1, 3, 7 or 9)
fn_l      sha256_parity        the SHA-256 digest of the sequence written as ASCII
                               ``0``/``1`` characters has an odd number of 1 bits
========  ===================  ===========================================================

Fixed positions of fn_e/fn_f: ``torch.randperm(L, generator=torch.Generator().manual_seed(42))[:k]``
(torch is imported for that permutation only, so it is the seed code's set for every ``L``).

Primality is exact for ``n < 3.3e24`` (Miller-Rabin with the first thirteen prime bases, a
proven deterministic set) and Baillie-PSW above (Miller-Rabin base 2 plus a strong Lucas test;
no counterexample is known and none exists below 2^64).

Each :class:`TargetFunction` also knows which lengths it accepts and, where it can be counted
cheaply, how many distinct sequences of each label exist (:func:`class_capacity`), so a data set
that cannot be made is refused up front with a clear message.  This module is pure data code.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional

from megaproc.errors import UserError

BINARY = "01"
DECIMAL = "0123456789"
PATTERNS = {"fn_c": "10101010", "fn_d": "00111111"}
RULE_30 = (0, 1, 1, 1, 1, 0, 0, 0)          # indexed by 4a + 2b + c
DYCK_SYMBOLS = {"00": "(", "01": ")", "10": "[", "11": "]"}
FIXED_POSITION_SEED = 42
# Spaces at most this large are enumerated to count each label exactly.
ENUMERATE_LIMIT = 1 << 16


class BooleanDataError(UserError, ValueError):
    """A target function or data set that cannot be made as requested (one-line message)."""


# ----------------------------------------------------------------------------- primality
_SMALL_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71,
                 73, 79, 83, 89, 97)
_MR_DETERMINISTIC_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
_MR_DETERMINISTIC_LIMIT = 3_317_044_064_679_887_385_961_981  # exact below this with those bases


def _strong_probable_prime(n: int, base: int) -> bool:
    """Miller-Rabin round: is odd ``n > 2`` a strong probable prime to ``base``?"""
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    x = pow(base, d, n)
    if x in (1, n - 1):
        return True
    for _ in range(s - 1):
        x = x * x % n
        if x == n - 1:
            return True
    return False


def _jacobi(a: int, n: int) -> int:
    """Jacobi symbol (a / n) for odd positive ``n``."""
    a %= n
    result = 1
    while a:
        while a % 2 == 0:
            a //= 2
            if n % 8 in (3, 5):
                result = -result
        a, n = n, a
        if a % 4 == 3 and n % 4 == 3:
            result = -result
        a %= n
    return result if n == 1 else 0


def _strong_lucas_probable_prime(n: int) -> bool:
    """Strong Lucas test with Selfridge's parameters (``D`` = 5, -7, 9, ... with (D/n) = -1)."""
    if math.isqrt(n) ** 2 == n:
        return False                        # no such D exists for squares
    d = 5
    while (symbol := _jacobi(d, n)) != -1:
        if symbol == 0 and abs(d) != n:
            return False                    # |d| shares a factor with n
        d = -d - 2 if d > 0 else -d + 2
    p, q = 1, (1 - d) // 4
    k, s = n + 1, 0
    while k % 2 == 0:
        k //= 2
        s += 1
    # U_k, V_k and Q^k mod n by binary expansion of k (left to right).
    u, v, qk = 0, 2, 1
    inv2 = (n + 1) // 2
    for bit in bin(k)[2:]:
        u, v, qk = u * v % n, (v * v - 2 * qk) % n, qk * qk % n
        if bit == "1":
            u, v = (p * u + v) * inv2 % n, (d * u + p * v) * inv2 % n
            qk = qk * q % n
    if u == 0 or v == 0:
        return True
    for _ in range(s - 1):
        v, qk = (v * v - 2 * qk) % n, qk * qk % n
        if v == 0:
            return True
    return False


def is_prime(n: int) -> bool:
    """Primality of ``n`` (exact below 3.3e24, Baillie-PSW above; see the module docstring)."""
    if n < 2:
        return False
    for p in _SMALL_PRIMES:
        if n % p == 0:
            return n == p
    if n < _SMALL_PRIMES[-1] ** 2:
        return True
    if n < _MR_DETERMINISTIC_LIMIT:
        return all(_strong_probable_prime(n, b) for b in _MR_DETERMINISTIC_BASES)
    return _strong_probable_prime(n, 2) and _strong_lucas_probable_prime(n)


def _sieve(limit: int) -> bytearray:
    """Eratosthenes: ``sieve[i] == 1`` iff ``i < limit`` is prime."""
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\x00\x00"
    for p in range(2, math.isqrt(limit - 1) + 1):
        if sieve[p]:
            sieve[p * p::p] = bytearray(len(range(p * p, limit, p)))
    return sieve


_SIEVE_PRIMES = tuple(i for i, flag in enumerate(_sieve(5000)) if flag)
_SIEVE_WINDOW = 4096


def next_prime_at_or_after(n: int) -> int:
    """The smallest prime ``>= n``.

    Large ``n`` sieve a window of candidates by the primes below 5000 first (slice assignment
    runs in C), so the costly :func:`is_prime` runs on about 7% of the candidates.
    """
    if n <= _SIEVE_PRIMES[-1] ** 2:
        candidate = max(n, 2)
        while not is_prime(candidate):
            candidate += 1
        return candidate
    while True:
        window = bytearray([1]) * _SIEVE_WINDOW
        for p in _SIEVE_PRIMES:
            start = -n % p
            window[start::p] = bytearray(len(range(start, _SIEVE_WINDOW, p)))
        for offset in range(_SIEVE_WINDOW):
            if window[offset] and is_prime(n + offset):
                return n + offset
        n += _SIEVE_WINDOW


# ----------------------------------------------------------------------------- functions
@lru_cache(maxsize=None)
def fixed_positions(length: int, count: int) -> tuple[int, ...]:
    """The ``count`` fixed positions of fn_e/fn_f at ``length`` (the seed's permutation)."""
    import torch  # only for the seeded permutation the spec names

    generator = torch.Generator().manual_seed(FIXED_POSITION_SEED)
    return tuple(int(i) for i in torch.randperm(length, generator=generator)[:count])


def _parity(bits: str) -> int:
    return bits.count("1") & 1


def parity_all(seq: str) -> int:
    """fn_a: parity of all bits."""
    return _parity(seq)


def parity_first_half(seq: str) -> int:
    """fn_b: parity of the first ``L // 2`` bits."""
    return _parity(seq[: len(seq) // 2])


def contains_pattern(pattern: str) -> Callable[[str], int]:
    """fn_c/fn_d: 1 iff ``pattern`` occurs in the sequence."""
    def label(seq: str) -> int:
        return int(pattern in seq)
    label.__name__ = f"contains_{pattern}"
    return label


def parity_of_fixed_positions(count: int) -> Callable[[str], int]:
    """fn_e/fn_f: parity of the bits at :func:`fixed_positions` (``count`` of them)."""
    def label(seq: str) -> int:
        return sum(seq[i] == "1" for i in fixed_positions(len(seq), count)) & 1
    label.__name__ = f"parity_rand_{count}"
    return label


def palindrome(seq: str) -> int:
    """fn_g: 1 iff the sequence equals its reverse."""
    return int(seq == seq[::-1])


def dyck2(seq: str) -> int:
    """fn_h: 1 iff the bit pairs spell a balanced, properly nested word over ``()[]``."""
    stack = []
    for i in range(0, len(seq) - 1, 2):
        symbol = DYCK_SYMBOLS[seq[i:i + 2]]
        if symbol in "([":
            stack.append(symbol)
        elif not stack or stack.pop() != ("(" if symbol == ")" else "["):
            return 0
    return int(not stack and len(seq) % 2 == 0)


def prime_decimal(seq: str) -> int:
    """fn_i/fn_k: 1 iff the decimal number is prime."""
    return int(is_prime(int(seq)))


def automata_parity(seq: str) -> int:
    """fn_j: parity of one rule-30 step over the zero-padded sequence."""
    padded = "0" + seq + "0"
    total = 0
    for i in range(len(seq)):
        a, b, c = padded[i] == "1", padded[i + 1] == "1", padded[i + 2] == "1"
        total += RULE_30[4 * a + 2 * b + c]
    return total & 1


def sha256_parity(seq: str) -> int:
    """fn_l: parity of the 1 bits of SHA-256 over the ASCII sequence."""
    digest = hashlib.sha256(seq.encode("ascii")).digest()
    return bin(int.from_bytes(digest, "big")).count("1") & 1


@dataclass(frozen=True)
class TargetFunction:
    """One target function: its label rule, alphabet and the lengths it accepts."""

    name: str
    seed_name: str
    label: Callable[[str], int]
    alphabet: str = BINARY
    min_length: int = 1
    length_multiple: int = 1

    def __call__(self, seq: str) -> int:
        """The label (0 or 1) of ``seq``; the sequence is checked first."""
        self.check_sequence(seq)
        return self.label(seq)

    def check_length(self, length: int) -> None:
        """Raise :class:`BooleanDataError` when the function is not defined at ``length``."""
        if not isinstance(length, int) or isinstance(length, bool):
            raise BooleanDataError(f"{self.name}: sequence length must be an int, got {length!r}")
        if length < self.min_length or length % self.length_multiple:
            need = f">= {self.min_length}"
            if self.length_multiple > 1:
                need += f" and a multiple of {self.length_multiple}"
            raise BooleanDataError(f"{self.name} ({self.seed_name}) needs a sequence length {need}, "
                                   f"got {length}")

    def check_sequence(self, seq: str) -> None:
        """Raise :class:`BooleanDataError` for a sequence of the wrong alphabet or length."""
        if not isinstance(seq, str):
            raise BooleanDataError(f"{self.name}: a sequence is a string of "
                                   f"{self.alphabet!r} symbols, got {type(seq).__name__}")
        self.check_length(len(seq))
        if seq.strip(self.alphabet):
            raise BooleanDataError(f"{self.name}: sequence {seq[:40]!r} has symbols outside "
                                   f"{self.alphabet!r}")
        if self.alphabet == DECIMAL and len(seq) > 1 and seq[0] == "0":
            raise BooleanDataError(f"{self.name}: an {len(seq)}-digit number has no leading zero "
                                   f"({seq[:40]!r})")


TARGET_FUNCTIONS: dict[str, TargetFunction] = {f.name: f for f in [
    TargetFunction("fn_a", "parity_all", parity_all),
    TargetFunction("fn_b", "parity_first_half", parity_first_half, min_length=2),
    TargetFunction("fn_c", "patternmatch1", contains_pattern(PATTERNS["fn_c"]), min_length=8),
    TargetFunction("fn_d", "patternmatch2", contains_pattern(PATTERNS["fn_d"]), min_length=8),
    TargetFunction("fn_e", "parity_rand_3", parity_of_fixed_positions(3), min_length=3),
    TargetFunction("fn_f", "parity_rand_10", parity_of_fixed_positions(10), min_length=10),
    TargetFunction("fn_g", "palindrome", palindrome, min_length=2),
    TargetFunction("fn_h", "dyck2", dyck2, min_length=4, length_multiple=4),
    TargetFunction("fn_i", "prime_decimal", prime_decimal, alphabet=DECIMAL, min_length=2),
    TargetFunction("fn_j", "automata_parity", automata_parity),
    TargetFunction("fn_k", "prime_decimal_tf_check", prime_decimal, alphabet=DECIMAL,
                   min_length=2),
    TargetFunction("fn_l", "sha256_parity", sha256_parity),
]}
FUNCTION_NAMES = tuple(TARGET_FUNCTIONS)


def get_function(name: str) -> TargetFunction:
    """The target function called ``name`` (``fn_a`` ... ``fn_l``)."""
    try:
        return TARGET_FUNCTIONS[name]
    except KeyError:
        raise BooleanDataError(f"unknown target function {name!r}; valid: "
                               f"{', '.join(FUNCTION_NAMES)}") from None


def vocabulary(name: str) -> str:
    """The symbols a sequence of target function ``name`` is written with."""
    return get_function(name).alphabet


# ----------------------------------------------------------------------------- capacity
def _count_avoiding(pattern: str, length: int) -> int:
    """Binary strings of ``length`` that do not contain ``pattern`` (KMP automaton count)."""
    m = len(pattern)
    failure = [0] * m
    k = 0
    for i in range(1, m):
        while k and pattern[i] != pattern[k]:
            k = failure[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        failure[i] = k

    def step(state: int, bit: str) -> int:
        while state and pattern[state] != bit:
            state = failure[state - 1]
        return state + 1 if pattern[state] == bit else 0

    counts = [1] + [0] * (m - 1)             # counts[state]: strings ending in that KMP state
    for _ in range(length):
        nxt = [0] * m
        for state, count in enumerate(counts):
            if count:
                for bit in BINARY:
                    new = step(state, bit)
                    if new < m:
                        nxt[new] += count
        counts = nxt
    return sum(counts)


def _decimal_composites(length: int, tails: Optional[tuple[int, ...]]) -> int:
    """Distinct ``length``-digit products of an ``L // 2``-digit and an ``L - L // 2``-digit
    factor (both >= 2), optionally restricted to last digits ``tails``."""
    a_len = length // 2
    b_len = length - a_len
    lo, hi = 10 ** (length - 1), 10 ** length
    products = set()
    for f1 in range(max(2, 10 ** (a_len - 1)), 10 ** a_len):
        for f2 in range(max(2, 10 ** (b_len - 1)), 10 ** b_len):
            n = f1 * f2
            if lo <= n < hi and (tails is None or n % 10 in tails):
                products.add(n)
    return len(products)


@lru_cache(maxsize=None)
def class_capacity(name: str, length: int) -> tuple[Optional[int], Optional[int]]:
    """``(negatives, positives)``: how many distinct sequences of each label the data-set
    construction of ``name`` can produce at ``length``; ``None`` where it is not counted (then
    the generator's stall guard is the check)."""
    fn = get_function(name)
    fn.check_length(length)
    if fn.alphabet == DECIMAL:
        lo, hi = 10 ** (length - 1), 10 ** length
        if length > 6:
            return None, None
        primes = sum(_sieve(hi)[lo:hi])
        tails = (1, 3, 7, 9) if name == "fn_k" else None
        return _decimal_composites(length, tails), primes
    total = 1 << length
    if name in ("fn_a", "fn_b", "fn_e", "fn_f"):
        return total // 2, total // 2        # a parity of >= 1 free bits splits the space evenly
    if name in PATTERNS:
        avoid = _count_avoiding(PATTERNS[name], length)
        return avoid, total - avoid
    if name == "fn_g":
        pos = 1 << ((length + 1) // 2)
        return total - pos, pos
    if name == "fn_h":
        pairs = length // 4                  # L bits = L/2 brackets = L/4 matched pairs
        pos = math.comb(2 * pairs, pairs) // (pairs + 1) * (1 << pairs)
        return total - pos, pos
    if total <= ENUMERATE_LIMIT:
        pos = sum(fn.label(format(i, f"0{length}b")) for i in range(total))
        return total - pos, pos
    return None, None
