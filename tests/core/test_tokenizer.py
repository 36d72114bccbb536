"""Tokenizer loading: local directories, hub names only from the local cache, clear errors."""

import subprocess
import sys

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["def f(x):\n    return x + 1\n"] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|eos|>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eos|>")


def test_local_directory_and_cached_hub_name(tmp_path):
    from megaproc.tokenizer import load_tokenizer

    local = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(local)
    loaded = load_tokenizer(local)
    assert loaded.pad_token_id == loaded.eos_token_id  # pad falls back to eos
    # The same files laid out as a hub cache entry for "someorg/tiny".
    repo = tmp_path / "hf" / "hub" / "models--someorg--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    tiny_tokenizer().save_pretrained(repo / "snapshots" / ("0" * 40))
    code = ("from megaproc.tokenizer import load_tokenizer, TokenizerError\n"
            "print(len(load_tokenizer('someorg/tiny')))\n"
            "try:\n    load_tokenizer('someorg/absent')\n"
            "except TokenizerError as exc:\n    print(exc)\n")
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == str(len(loaded))
    assert "not found" in lines[1] and "nothing is downloaded" in lines[1]
