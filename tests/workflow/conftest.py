"""Shared fixtures of the task-workflow tests: the built-in tokenizer and tiny splits."""

from __future__ import annotations

import warnings

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    """The built-in default-corpus tokenizer (built once per machine, then cached)."""
    from megaproc.data.default_corpus import ensure_default_corpus
    from megaproc.tokenizer import load_tokenizer

    tokenizer_dir, _ = ensure_default_corpus(2048, log=lambda *a, **k: None)
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def symbolic_splits(tmp_path_factory):
    """Small symbolic splits for n=26, 3 curriculum stages (eval 40, test 40, mixin 200)."""
    from data_tools.build_splits import build_splits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_splits(str(tmp_path_factory.mktemp("splits")), max_input_size=26,
                            max_lookahead=3, seed=12345, symbolic=True, eval_size=40,
                            test_size=40, mixin_size=200, progress=False)
