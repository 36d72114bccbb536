"""EWoK (Elements of World Knowledge): which context makes a target sentence more likely?

Data
    jsonl files, one item per line with ``Domain, Context1, Context2, Target1, Target2`` (strings)
    and any other EWoK fields (``ConceptA``, ``TargetDiff``, ...; passed through to the item
    rows).  The source is a directory of ``*.jsonl`` files or a ``.zip`` of them, read in memory
    without extracting anything (files in name order).  Where it comes from, in the seed's
    order (``ewok_eval.py`` of ``gpt_prototype_fineweb``):

    1. the path given (``--ewok PATH``, ``eval.ewok_path``);
    2. else ``$EWOK_SRC`` (a directory or a ``.zip``);
    3. else the repository's own copy: ``data/eval/ewok_fast_jsonl.zip``, then
       ``data/eval/ewok_fast/`` (:data:`REPOSITORY_SOURCES`);

    and a directory without ``*.jsonl`` files of its own is searched for the seed's layout,
    ``ewok_fast_jsonl.zip`` first, then ``ewok_fast/``.

    Encrypted archives: the password is ``$EWOK_ZIP_PASSWORD``, or the seed's default
    ``ew2026`` when the variable is unset.  Zips are read with ``pyzipper``, which decrypts both
    the traditional PKWARE scheme ("ZipCrypto", what ``zip -P`` writes) and WinZip AES
    (``7z -tzip -mem=AES256``, most GUI tools); PKWARE "strong encryption" is reported as
    unsupported.  A wrong password is one clear error naming the archive member.

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
import zlib
from dataclasses import dataclass
from pathlib import Path

import pyzipper

from megaproc.eval.evaluator import EvalContext, EvalResult
from megaproc.eval.loglik import LogitsFn, LoglikScorer
from megaproc.eval.rows import EvalInputError, json_rows, require_fields
from megaproc.files import REPO_ROOT

REQUIRED_FIELDS = ("Domain", "Context1", "Context2", "Target1", "Target2")
SOURCE_ENV = "EWOK_SRC"
PASSWORD_ENV = "EWOK_ZIP_PASSWORD"
DEFAULT_PASSWORD = "ew2026"  # the seed's default when EWOK_ZIP_PASSWORD is unset
SEED_LAYOUT = ("ewok_fast_jsonl.zip", "ewok_fast")  # searched inside a directory, in this order
# Tried after $EWOK_SRC, in this order: the repository's own copy (configs/fineweb_edu.yaml).
REPOSITORY_SOURCES = (REPO_ROOT / "data" / "eval" / "ewok_fast_jsonl.zip",
                      REPO_ROOT / "data" / "eval" / "ewok_fast")
_STRONG_ENCRYPTION_FLAG = 0x40  # PKWARE strong encryption (SES): no maintained Python reader


@dataclass(frozen=True)
class EwokItem:
    """One EWoK row: its fields and where it came from (``file`` is the member or file name)."""

    fields: dict
    file: str
    line: int

    def __getitem__(self, key: str) -> str:
        return self.fields[key]


def resolve_source(path: str | os.PathLike | None = None) -> Path:
    """The EWoK source: ``path``, else ``$EWOK_SRC``, else the first of
    :data:`REPOSITORY_SOURCES` that exists; a directory without ``*.jsonl`` files is searched
    for ``ewok_fast_jsonl.zip`` then ``ewok_fast/`` (the seed's order)."""
    if path is None or str(path) == "":
        path = os.environ.get(SOURCE_ENV)
        if not path:
            path = next((p for p in REPOSITORY_SOURCES if p.exists()), None)
        if not path:
            raise EvalInputError(f"no EWoK source: pass a directory or .zip of jsonl files, set "
                                 f"{SOURCE_ENV}, or put the data at "
                                 f"{' or '.join(str(p) for p in REPOSITORY_SOURCES)}")
    source = Path(path)
    if source.is_dir() and not any(source.glob("*.jsonl")):
        for name in SEED_LAYOUT:
            candidate = source / name
            if candidate.is_file() or (candidate.is_dir() and any(candidate.glob("*.jsonl"))):
                return candidate
        raise EvalInputError(f"EWoK source {source}: no *.jsonl files (nor "
                             f"{' or '.join(SEED_LAYOUT)})")
    if not source.exists():
        raise EvalInputError(f"EWoK source not found: {source}")
    if source.is_file() and not pyzipper.is_zipfile(source):
        raise EvalInputError(f"EWoK source {source}: neither a directory nor a .zip archive")
    return source


def zip_password(password: str | None = None) -> tuple[str, str]:
    """``(password, where it came from)``: the argument, else ``$EWOK_ZIP_PASSWORD``, else the
    seed's default."""
    if password is not None:
        return password, "the password given"
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV], PASSWORD_ENV
    return DEFAULT_PASSWORD, f"{PASSWORD_ENV} is unset, tried the default {DEFAULT_PASSWORD!r}"


def _read_member(archive: pyzipper.AESZipFile, info: pyzipper.ZipInfo, zip_path: Path,
                 password: str, which: str) -> bytes:
    where = f"{zip_path}:{info.filename}"
    encrypted = bool(info.flag_bits & 0x1)
    if info.flag_bits & _STRONG_ENCRYPTION_FLAG:
        raise EvalInputError(f"{where}: PKWARE strong-encrypted zip member (unsupported); "
                             "re-create it with `zip -P PASSWORD` or as WinZip AES, or extract "
                             "it and pass the directory")
    try:
        return archive.read(info, pwd=password.encode("utf-8") if encrypted else None)
    except RuntimeError as exc:  # "Bad password for file ..." (ZipCrypto header / AES verifier)
        if "password" in str(exc).lower():
            raise EvalInputError(f"{where}: wrong zip password ({which})") from None
        raise EvalInputError(f"{where}: cannot read zip member ({exc})") from None
    except (zlib.error, pyzipper.BadZipFile) as exc:
        # A wrong ZipCrypto password passes the 1-byte header check 1 time in 256 and then
        # yields garbage: a broken deflate stream or a CRC mismatch (AES checks an HMAC).
        if encrypted:
            raise EvalInputError(f"{where}: wrong zip password ({which})") from None
        raise EvalInputError(f"{where}: corrupt zip member ({exc})") from None
    except NotImplementedError as exc:
        raise EvalInputError(f"{where}: unsupported zip member ({exc})") from None


def _sources(source: Path, password: str | None):
    """``(label, text)`` of every jsonl file of the source, in name order (read in memory);
    ``password`` as :func:`zip_password` takes it."""
    if source.is_dir():
        files = sorted(source.glob("*.jsonl"))
        if not files:
            raise EvalInputError(f"EWoK source {source}: no *.jsonl files")
        for file in files:
            yield str(file), file.read_text(encoding="utf-8")
        return
    try:
        # pyzipper's AESZipFile reads plain, ZipCrypto and WinZip-AES members alike.
        archive = pyzipper.AESZipFile(source)
    except (pyzipper.BadZipFile, NotImplementedError) as exc:
        raise EvalInputError(f"EWoK source {source}: not a readable zip ({exc})") from None
    with archive:
        members = sorted((i for i in archive.infolist()
                          if not i.is_dir() and i.filename.lower().endswith(".jsonl")
                          and not i.filename.startswith("__MACOSX/")), key=lambda i: i.filename)
        if not members:
            raise EvalInputError(f"EWoK source {source}: the archive holds no .jsonl files")
        secret, which = zip_password(password)
        for info in members:
            data = _read_member(archive, info, source, secret, which)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise EvalInputError(f"{source}:{info.filename}: not UTF-8 text") from None
            yield f"{source}:{info.filename}", text


def parse_item(record, where: str, file: str, line: int) -> EwokItem:
    """Validate one decoded row (``where`` = ``file:line`` prefixes every error)."""
    require_fields(record, where, REQUIRED_FIELDS)
    for key in ("Domain", "Context1", "Context2"):
        if not isinstance(record[key], str):
            raise EvalInputError(f"{where}: {key!r} must be a string")
    for key in ("Target1", "Target2"):
        if not isinstance(record[key], str) or not record[key]:
            raise EvalInputError(f"{where}: {key!r} must be a non-empty string")
    return EwokItem(record, file, line)


def load_ewok(path: str | os.PathLike | None = None, password: str | None = None,
              max_items: int = 0) -> list[EwokItem]:
    """Items of an EWoK source (see :func:`resolve_source`); ``password`` defaults to
    ``$EWOK_ZIP_PASSWORD``, else :data:`DEFAULT_PASSWORD`; first ``max_items`` when > 0.
    Errors name the file and line."""
    source = resolve_source(path)
    items: list[EwokItem] = []
    for label, text in _sources(source, password):
        for line_no, where, record in json_rows(text.splitlines(), label):
            items.append(parse_item(record, where, label, line_no))
            if max_items and len(items) >= max_items:
                return items
    if not items:
        raise EvalInputError(f"EWoK source {source}: no items")
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
    """Score ``items``; returns the summary ``{"num_items", "sum": {...}, "mean": {...}}``
    (:func:`ewok_metrics` names it) and per-item rows (on every rank when sharded)."""
    results = scorer.score_pairs(logits_fn, requests(items), rank, world_size, desc="ewok")
    return score_items(items, results)


def ewok_metrics(summary: dict) -> dict:
    """The published metric names of an :func:`evaluate_ewok` summary."""
    metrics = {f"ewok_{reduction}_{key}": summary[reduction][key]
               for reduction in ("sum", "mean")
               for key in ("accuracy", "accuracy_t1", "accuracy_t2")}
    metrics["ewok_num_items"] = summary["num_items"]
    metrics["ewok_domain"] = dict(summary["sum"]["by_domain"])
    metrics["ewok_mean_domain"] = dict(summary["mean"]["by_domain"])
    return metrics


class EwokEvaluator:
    """EWoK context-comparison accuracy of a model on checked items (name ``ewok``)."""

    name = "ewok"

    def __init__(self, items: list[EwokItem], source: str | None = None, add_bos: bool = False):
        self.items = list(items)
        self.source = source
        self.add_bos = bool(add_bos)

    @classmethod
    def from_source(cls, path: str | os.PathLike | None = None, max_items: int = 0,
                    add_bos: bool = False) -> "EwokEvaluator":
        """Find, read (and decrypt) the source now (see :func:`load_ewok`)."""
        source = resolve_source(path)
        return cls(load_ewok(source, max_items=max_items), str(source), add_bos)

    def run(self, ctx: EvalContext) -> EvalResult:
        """Score the four pairs of every item (collective over ``ctx``'s ranks)."""
        scorer = LoglikScorer(ctx.tokenizer, ctx.max_length, ctx.batch_size, self.add_bos,
                              ctx.device, ctx.progress)
        summary, rows = evaluate_ewok(scorer, ctx.forward, self.items, ctx.rank, ctx.world_size)
        return EvalResult(ewok_metrics(summary), rows,
                          {"source": self.source} if self.source else {})
