"""Which records ``data_tools.preprocess`` keeps (``--filter``) and where they go (``--valid-fraction``).

Filters: ``--filter KEY=VALUE`` names a dotted path into each JSON record (or into the columns
of a parquet/arrow row: the first part is the column, the rest struct fields), e.g.
``meta.pile_set_name=PubMed Abstracts``.  A record matches when the value at that path is the
string VALUE, or a non-string whose JSON text is VALUE (``int_score=3``, ``flag=true``,
``x=null``).  A missing path never matches.  Every filter must match for a record to be kept.

Validation split: a document goes to validation when the first 8 bytes of
``blake2b(text.encode("utf-8"), digest_size=8)``, read as a little-endian unsigned integer, are
below ``round(F * 2**64)``.  The rule looks at the text alone (not its position, file or any
other field), so builds from overlapping inputs, with other filters, caps or file orders put a
document in the same split, and a document repeated in the corpus never lands in both.  A build
with a larger fraction holds every validation document of a build with a smaller one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from data_tools._errors import DataToolError

HASH_RULE = "blake2b(utf-8 text, digest_size=8) as little-endian uint64 < round(F * 2**64)"
_MISSING = object()


@dataclass(frozen=True)
class RecordFilter:
    """One ``--filter KEY=VALUE``: a dotted path and the value it must hold."""

    path: tuple[str, ...]
    value: str

    @property
    def spec(self) -> str:
        """The filter as written on the command line."""
        return f"{'.'.join(self.path)}={self.value}"

    def matches(self, record) -> bool:
        """True when the value at ``path`` in ``record`` is ``value`` (see the module docstring)."""
        found = record
        for part in self.path:
            if not isinstance(found, dict):
                return False
            found = found.get(part, _MISSING)
            if found is _MISSING:
                return False
        if isinstance(found, str):
            return found == self.value
        return json.dumps(found, ensure_ascii=False) == self.value


def parse_filters(specs: list[str] | None) -> list[RecordFilter]:
    """Parse ``--filter`` arguments; a spec without ``=`` or with an empty key is a user error."""
    filters = []
    for spec in specs or []:
        key, sep, value = spec.partition("=")
        parts = tuple(key.split("."))
        if not sep or not key or any(not part for part in parts):
            raise DataToolError(f"--filter {spec!r}: expected KEY=VALUE with a dotted KEY, "
                                "e.g. meta.pile_set_name=PubMed Abstracts")
        filters.append(RecordFilter(parts, value))
    return filters


def matches_all(filters: list[RecordFilter], record) -> bool:
    """True when ``record`` matches every filter (always true without filters)."""
    return all(f.matches(record) for f in filters)


def valid_threshold(fraction: float | None) -> int | None:
    """The hash threshold of ``--valid-fraction`` (None: no validation split)."""
    if fraction is None:
        return None
    if not 0.0 < fraction < 1.0:
        raise DataToolError(f"--valid-fraction must be strictly between 0 and 1 (got {fraction})")
    return round(fraction * 2**64)


def text_hash(text: str) -> int:
    """The 64-bit hash of a document's text that decides its split."""
    # surrogatepass: a lone surrogate cannot be tokenized either; hashing must not fail first.
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def is_valid(text: str, threshold: int) -> bool:
    """True when ``text`` belongs to the validation split of ``threshold``."""
    return text_hash(text) < threshold
