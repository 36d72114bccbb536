"""Local tokenizer loading for the data tools (no network access, ever).

``TOK`` may be
- a directory holding a HuggingFace ``tokenizer.json`` (loaded with the fast ``tokenizers``
  library directly; BOS/EOS come from ``tokenizer_config.json`` / ``special_tokens_map.json``),
- a directory holding only a sentencepiece ``tokenizer.model``,
- a sentencepiece ``.model`` file, or a ``tokenizer.json`` file,
- a hub name (``org/name``) whose ``tokenizer.json`` is already in the local HF cache.

Special tokens are never added implicitly: callers add BOS/EOD themselves.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod

from data_tools._errors import DataToolError

_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "[SEP]")
_BOS_CANDIDATES = ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]", "<|endoftext|>")


def _token_string(value) -> str | None:
    if isinstance(value, dict):  # serialized AddedToken
        return value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer(ABC):
    """A loaded tokenizer: batch encoding to id lists, decoding, vocab size, BOS/EOS ids."""

    kind: str
    path: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None

    @abstractmethod
    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of every text, without special tokens."""

    @abstractmethod
    def decode(self, ids) -> str:
        """Text of ``ids``."""

    def set_threads(self, threads: int) -> None:
        """Limit the threads one ``encode_batch`` call may use (best effort)."""


class HFTokenizer(Tokenizer):
    """A HuggingFace fast tokenizer (``tokenizer.json``) used through ``tokenizers`` directly."""

    kind = "huggingface"

    def __init__(self, tokenizer_json: str, config_dir: str | None):
        from tokenizers import Tokenizer as RustTokenizer

        self.path = tokenizer_json
        self._tok = RustTokenizer.from_file(tokenizer_json)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        bos, eos = self._configured_special_tokens(config_dir)
        self.bos_id = self._first_id([bos] if bos else _BOS_CANDIDATES)
        self.eos_id = self._first_id([eos] if eos else _EOS_CANDIDATES)
        self._encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)

    @staticmethod
    def _configured_special_tokens(config_dir: str | None) -> tuple[str | None, str | None]:
        bos = eos = None
        if not config_dir:
            return bos, eos
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            path = os.path.join(config_dir, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as handle:
                    config = json.load(handle)
                bos = bos or _token_string(config.get("bos_token"))
                eos = eos or _token_string(config.get("eos_token"))
        return bos, eos

    def _first_id(self, candidates) -> int | None:
        for token in candidates:
            token_id = self._tok.token_to_id(token)
            if token_id is not None:
                return token_id
        return None

    def encode_batch(self, texts):
        return [encoding.ids for encoding in self._encode(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def set_threads(self, threads: int) -> None:
        # The Rust pool reads these once, at first parallel use in the process.
        os.environ["RAYON_NUM_THREADS"] = str(threads)
        os.environ["RAYON_RS_NUM_CPUS"] = str(threads)
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece ``.model`` file."""

    kind = "sentencepiece"

    def __init__(self, model_file: str):
        import sentencepiece

        self.path = model_file
        self._sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
        self.vocab_size = self._sp.get_piece_size()
        self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        self.eos_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else None
        self._threads = -1

    def encode_batch(self, texts):
        return self._sp.encode(list(texts), num_threads=self._threads)

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])

    def set_threads(self, threads: int) -> None:
        self._threads = threads


def _from_hub_cache(name: str) -> str | None:
    if name.count("/") != 1 or os.path.exists(name):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(name, "tokenizer.json")
    return found if isinstance(found, str) else None


def load_tokenizer(spec: str) -> Tokenizer:
    """Load the tokenizer named by ``spec`` (see module docstring); DataToolError if impossible."""
    spec = os.fspath(spec)
    try:
        return _load(spec)
    except DataToolError:
        raise
    except Exception as exc:  # tokenizers / sentencepiece raise plain Exception or RuntimeError
        message = " ".join(str(exc).split())[:300]
        raise DataToolError(f"{spec}: cannot load tokenizer ({type(exc).__name__}: {message})") from None


def _load(spec: str) -> Tokenizer:
    if os.path.isdir(spec):
        tokenizer_json = os.path.join(spec, "tokenizer.json")
        if os.path.isfile(tokenizer_json):
            return HFTokenizer(tokenizer_json, spec)
        models = sorted(f for f in os.listdir(spec) if f.endswith(".model"))
        if models:
            return SentencePieceTokenizer(os.path.join(spec, models[0]))
        raise DataToolError(f"{spec}: tokenizer directory has neither tokenizer.json nor a sentencepiece .model")
    if os.path.isfile(spec):
        if spec.endswith(".json"):
            return HFTokenizer(spec, os.path.dirname(spec))
        if spec.endswith(".model"):
            return SentencePieceTokenizer(spec)
        raise DataToolError(f"{spec}: unknown tokenizer file type (expected tokenizer.json or a .model file)")
    cached = _from_hub_cache(spec)
    if cached:
        return HFTokenizer(cached, os.path.dirname(cached))
    raise DataToolError(f"{spec}: tokenizer not found (not a local path nor a hub name in the local cache)")
