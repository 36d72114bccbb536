"""Load the run's tokenizer from local files only (never the hub)."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerFast


class TokenizerError(ValueError):
    """The tokenizer path is missing or unreadable."""


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """A fast tokenizer from a local HF directory, a tokenizer.json or a sentencepiece .model.

    Special tokens: ``eos_token`` is required for document separation; a missing pad token
    falls back to the eos token.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise TokenizerError(f"tokenizer not found: {path} (expected a local HF tokenizer "
                             "directory, tokenizer.json or sentencepiece .model)")
    try:
        if p.is_dir():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        elif p.suffix == ".json":
            tok = PreTrainedTokenizerFast(tokenizer_file=str(p))
        elif p.suffix == ".model":
            from transformers import LlamaTokenizerFast

            tok = LlamaTokenizerFast(vocab_file=str(p), add_bos_token=False, add_eos_token=False)
        else:
            raise TokenizerError(f"tokenizer {path}: unsupported file type {p.suffix!r}")
    except TokenizerError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line for any loader failure
        raise TokenizerError(f"cannot load tokenizer {path}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def pad_id(tokenizer) -> int:
    """Id used to pad batches (pad, else eos, else 0)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0
