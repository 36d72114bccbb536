"""EWoK (Elements of World Knowledge): which context makes a target sentence more likely?

Data
    jsonl files, one item per line with ``Domain, Context1, Context2, Target1, Target2`` (strings)
    and any other EWoK fields (``ConceptA``, ``TargetDiff``, ...; passed through to the item
    rows).  The source is a directory of ``*.jsonl`` files or a ``.zip`` of them, read in memory
    without extracting anything (files in name order).  Where it comes from, as in the seed's
    ``ewok_eval.py``:

    1. the path given (``--ewok PATH``, ``eval.ewok_path``), else the ``EWOK_SRC`` variable;
    2. a directory without ``*.jsonl`` files of its own is searched for the seed's layout:
       ``ewok_fast_jsonl.zip`` first, then ``ewok_fast/``.

    Encrypted archives: the password comes from ``EWOK_ZIP_PASSWORD`` (there is no built-in
    default).  Python's ``zipfile`` decrypts only the traditional PKWARE scheme ("ZipCrypto",
    what ``zip -P`` and the seed's loader use); a WinZip-AES member (compression method 99, e.g.
    ``7z -tzip -mem=AES256``) or PKWARE strong encryption is reported as unsupported, with the
    fix (re-create the archive with ``zip -P``).  A wrong password is one clear error.

Scoring (the EWoK paper's log-probability comparison; it is *not* the seed's "official m1",
which compared the two targets under one context)
    ``logP(Ti|Cj)`` is the summed log-probability of the continuation ``" " + Ti`` after the
    context ``Cj`` (tokenized separately, no BOS; :mod:`megaproc.eval.loglik`).  T1 is correct
    when ``logP(T1|C1) > logP(T1|C2)``, T2 when ``logP(T2|C2) > logP(T2|C1)``; a tie counts 0.5;
    the item score is the mean of the two.  ``sum`` compares summed log-probabilities, ``mean``
    per-token means.  Both comparisons of one target share its tokens, so ``mean`` decides like
    ``sum`` except when the left truncation of an over-long context cuts into the target
    (it is reported because the seed reported both).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from megaproc.eval.loglik import LogitsFn, LoglikScorer
from megaproc.eval.rows import json_rows, require_fields

REQUIRED_FIELDS = ("Domain", "Context1", "Context2", "Target1", "Target2")
SOURCE_ENV = "EWOK_SRC"
PASSWORD_ENV = "EWOK_ZIP_PASSWORD"
SEED_LAYOUT = ("ewok_fast_jsonl.zip", "ewok_fast")  # searched inside a directory, in this order
_AES_METHOD = 99  # WinZip AE-1/AE-2


@dataclass(frozen=True)
class EwokItem:
    """One EWoK row: its fields and where it came from (``file`` is the member or file name)."""

    fields: dict
    file: str
    line: int

    def __getitem__(self, key: str) -> str:
        return self.fields[key]


def resolve_source(path: str | os.PathLike | None = None) -> Path:
    """The EWoK source: ``path``, else ``$EWOK_SRC``; a directory without ``*.jsonl`` files is
    searched for ``ewok_fast_jsonl.zip`` then ``ewok_fast/`` (the seed's order)."""
    if path is None or str(path) == "":
        path = os.environ.get(SOURCE_ENV)
        if not path:
            raise ValueError(f"no EWoK source: pass a directory or .zip of jsonl files, or set "
                             f"{SOURCE_ENV}")
    source = Path(path)
    if source.is_dir() and not any(source.glob("*.jsonl")):
        for name in SEED_LAYOUT:
            candidate = source / name
            if candidate.is_file() or (candidate.is_dir() and any(candidate.glob("*.jsonl"))):
                return candidate
        raise ValueError(f"EWoK source {source}: no *.jsonl files (nor {' or '.join(SEED_LAYOUT)})")
    if not source.exists():
        raise ValueError(f"EWoK source not found: {source}")
    if source.is_file() and not zipfile.is_zipfile(source):
        raise ValueError(f"EWoK source {source}: neither a directory nor a .zip archive")
    return source


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, zip_path: Path,
                 password: str | None) -> bytes:
    where = f"{zip_path}:{info.filename}"
    encrypted = bool(info.flag_bits & 0x1)
    if info.compress_type == _AES_METHOD or info.flag_bits & 0x40:
        raise ValueError(f"{where}: AES/strong-encrypted zip member; Python's zipfile reads only "
                         "ZipCrypto archives - re-create it with `zip -P PASSWORD` (or extract "
                         "it and pass the directory)")
    if encrypted and not password:
        raise ValueError(f"{where}: encrypted zip member; set {PASSWORD_ENV}")
    try:
        return archive.read(info, pwd=password.encode("utf-8") if encrypted else None)
    except RuntimeError as exc:  # "Bad password for file ..." (12-byte header check)
        if "password" in str(exc).lower():
            raise ValueError(f"{where}: wrong zip password ({PASSWORD_ENV})") from None
        raise ValueError(f"{where}: cannot read zip member ({exc})") from None
    except (zlib.error, zipfile.BadZipFile) as exc:
        # A wrong password passes the 1-byte header check 1 time in 256 and then yields
        # garbage: a broken deflate stream or a CRC mismatch.
        if encrypted:
            raise ValueError(f"{where}: wrong zip password ({PASSWORD_ENV})") from None
        raise ValueError(f"{where}: corrupt zip member ({exc})") from None
    except NotImplementedError as exc:
        raise ValueError(f"{where}: unsupported zip member ({exc})") from None


def _sources(source: Path, password: str | None):
    """``(label, text)`` of every jsonl file of the source, in name order (read in memory)."""
    if source.is_dir():
        files = sorted(source.glob("*.jsonl"))
        if not files:
            raise ValueError(f"EWoK source {source}: no *.jsonl files")
        for file in files:
            yield str(file), file.read_text(encoding="utf-8")
        return
    try:
        archive = zipfile.ZipFile(source)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"EWoK source {source}: not a readable zip ({exc})") from None
    with archive:
        members = sorted((i for i in archive.infolist()
                          if not i.is_dir() and i.filename.lower().endswith(".jsonl")
                          and not i.filename.startswith("__MACOSX/")), key=lambda i: i.filename)
        if not members:
            raise ValueError(f"EWoK source {source}: the archive holds no .jsonl files")
        for info in members:
            data = _read_member(archive, info, source, password)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{source}:{info.filename}: not UTF-8 text") from None
            yield f"{source}:{info.filename}", text


def parse_item(record, where: str, file: str, line: int) -> EwokItem:
    """Validate one decoded row (``where`` = ``file:line`` prefixes every error)."""
    require_fields(record, where, REQUIRED_FIELDS)
    for key in ("Domain", "Context1", "Context2"):
        if not isinstance(record[key], str):
            raise ValueError(f"{where}: {key!r} must be a string")
    for key in ("Target1", "Target2"):
        if not isinstance(record[key], str) or not record[key]:
            raise ValueError(f"{where}: {key!r} must be a non-empty string")
    return EwokItem(record, file, line)


def load_ewok(path: str | os.PathLike | None = None, password: str | None = None,
              max_items: int = 0) -> list[EwokItem]:
    """Items of an EWoK source (see :func:`resolve_source`); ``password`` defaults to
    ``$EWOK_ZIP_PASSWORD``; first ``max_items`` when > 0.  Errors name the file and line."""
    source = resolve_source(path)
    if password is None:
        password = os.environ.get(PASSWORD_ENV) or None
    items: list[EwokItem] = []
    for label, text in _sources(source, password):
        for line_no, where, record in json_rows(text.splitlines(), label):
            items.append(parse_item(record, where, label, line_no))
            if max_items and len(items) >= max_items:
                return items
    if not items:
        raise ValueError(f"EWoK source {source}: no items")
    return items


def requests(items: list[EwokItem]) -> list[tuple[str, str]]:
    """Four pairs per item, in the order (T1|C1), (T1|C2), (T2|C1), (T2|C2)."""
    pairs = []
    for item in items:
        for target in ("Target1", "Target2"):
            for context in ("Context1", "Context2"):
                pairs.append((item[context], " " + item[target]))
    return pairs


def _wins(better: float, worse: float) -> float:
    return 1.0 if better > worse else 0.5 if better == worse else 0.0


def _summary(scores: list[tuple[float, float]], domains: list[str]) -> dict:
    n = len(scores)
    by_domain: dict[str, list[float]] = {}
    for (t1, t2), domain in zip(scores, domains):
        by_domain.setdefault(domain, []).append((t1 + t2) / 2)
    return {"accuracy": sum((t1 + t2) / 2 for t1, t2 in scores) / n,
            "accuracy_t1": sum(t1 for t1, _ in scores) / n,
            "accuracy_t2": sum(t2 for _, t2 in scores) / n,
            "by_domain": {d: sum(v) / len(v) for d, v in sorted(by_domain.items())}}


def score_items(items: list[EwokItem], results) -> tuple[dict, list[dict]]:
    """Summary ``{"num_items", "sum": {...}, "mean": {...}}`` and per-item rows from the
    :class:`~megaproc.eval.loglik.LoglikResult` list of :func:`requests`."""
    rows, scores = [], {"sum": [], "mean": []}
    for k, item in enumerate(items):
        r11, r12, r21, r22 = results[4 * k:4 * k + 4]  # (T1|C1), (T1|C2), (T2|C1), (T2|C2)
        row = dict(item.fields)
        row.update(task="ewok", row_index=k, file=item.file, line=item.line,
                   logp_t1_c1=r11.logprob, logp_t1_c2=r12.logprob,
                   logp_t2_c1=r21.logprob, logp_t2_c2=r22.logprob,
                   tokens_t1=r11.num_tokens, tokens_t2=r22.num_tokens)
        for reduction in ("sum", "mean"):
            value = (lambda r: r.logprob) if reduction == "sum" else (lambda r: r.mean_logprob)
            t1 = _wins(value(r11), value(r12))
            t2 = _wins(value(r22), value(r21))
            scores[reduction].append((t1, t2))
            row.update({f"{reduction}_t1_correct": t1, f"{reduction}_t2_correct": t2,
                        f"{reduction}_score": (t1 + t2) / 2})
        rows.append(row)
    domains = [item["Domain"] for item in items]
    return ({"num_items": len(items), "sum": _summary(scores["sum"], domains),
             "mean": _summary(scores["mean"], domains)}, rows)


def evaluate_ewok(scorer: LoglikScorer, logits_fn: LogitsFn, items: list[EwokItem],
                  rank: int = 0, world_size: int = 1) -> tuple[dict, list[dict]]:
    """Score ``items``; returns the summary and per-item rows (on every rank when sharded)."""
    results = scorer.score_pairs(logits_fn, requests(items), rank, world_size, desc="ewok")
    return score_items(items, results)
