"""Load the run's tokenizer from local files only (never the hub)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from huggingface_hub import snapshot_download
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from megaproc.errors import UserError


class TokenizerError(UserError, ValueError):
    """The tokenizer path is missing or unreadable."""


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """A fast tokenizer from a local HF directory, a tokenizer.json, a sentencepiece .model, or a
    hub name already in the local HF cache (never downloaded).

    Special tokens: ``eos_token`` is required for document separation; a missing pad token
    falls back to the eos token.
    """
    p = Path(path).expanduser()
    hub_name = not p.exists() and not str(path).startswith((".", "/", "~")) and str(path).count("/") <= 1
    if not p.exists() and not hub_name:
        raise TokenizerError(f"tokenizer not found: {path} (expected a local HF tokenizer "
                             "directory, tokenizer.json, sentencepiece .model or a hub name "
                             "already in the local cache)")
    try:
        if hub_name:  # e.g. EleutherAI/pythia-160m, only from the local HF cache
            p = Path(snapshot_download(str(path), local_files_only=True))
        if p.is_dir():
            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        elif p.suffix == ".json":
            tok = PreTrainedTokenizerFast(tokenizer_file=str(p))
        elif p.suffix == ".model":
            tok = sentencepiece_tokenizer(p)
        else:
            raise TokenizerError(f"tokenizer {path}: unsupported file type {p.suffix!r}")
    except TokenizerError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line for any loader failure
        if hub_name:
            raise TokenizerError(f"tokenizer not found: {path} is neither a local path nor a hub "
                                 "name in the local cache (nothing is downloaded)") from None
        raise TokenizerError(f"cannot load tokenizer {path}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def sentencepiece_tokenizer(model_file: Path) -> PreTrainedTokenizerFast:
    """A fast tokenizer that encodes exactly as ``SentencePieceProcessor.encode`` does.

    transformers 5 builds the fast tokenizer of a bare ``tokenizer.model`` from the model's own
    normalizer and trainer settings (``SpmConverter.build_tokenizer_from_spm_proto``: whitespace
    handling, dummy prefix, byte fallback, bos/eos pieces) only through ``from_pretrained`` of the
    generic class on a directory holding ``tokenizer.model``; a ``LlamaTokenizerFast(vocab_file=...)``
    instead yields an empty vocabulary.  So the file is linked into a scratch directory.
    """
    with tempfile.TemporaryDirectory(prefix="megaproc_spm_") as scratch:
        os.symlink(Path(model_file).resolve(), Path(scratch) / "tokenizer.model")
        return PreTrainedTokenizerFast.from_pretrained(scratch, local_files_only=True)


def private_backend(tokenizer):
    """An independent copy of a fast tokenizer's Rust backend, without truncation or padding.

    Encoding with it never touches shared state: calling a shared HF tokenizer re-configures
    its backend on every call, which fails ("Already borrowed") when a prefetch thread and the
    main thread tokenize at once.  None for tokenizers without a Rust backend.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def pad_id(tokenizer) -> int:
    """Id used to pad batches (pad, else eos, else 0)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def symbol_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """A tokenizer over single symbols for from-scratch sequence classifiers: symbol ``i`` of
    ``alphabet`` has id ``i``, ``<bos>`` (also pad and eos) id ``len(alphabet)``, and encoding
    ``"0110"`` gives ``[bos, 0, 1, 1, 0]`` — the ids :class:`~megaproc.models.classification.SymbolEncoder`
    feeds the model, saved with checkpoints and exports."""
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    bos = len(alphabet)
    vocab["<bos>"] = bos
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<bos>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                           special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>",
                                   eos_token="<bos>", pad_token="<bos>", unk_token="<bos>")
