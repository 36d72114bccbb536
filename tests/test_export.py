"""Export of DeepSpeed checkpoints (ZeRO 0/2/3) to HF directories, in one gloo process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megaproc import distributed as dist_utils

from megaproc.export import (
    ExportError,
    export_checkpoint,
    load_checkpoint_model,
    main,
)
from megaproc.models import build_model

SEQ_LEN = 16
MICRO_BATCH = 2
TEXTS = ["the quick brown fox jumps over the lazy dog",
         "graph search with lookahead", "boolean functions and parity",
         "procedural pre-pretraining transfers to language"] * 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def process_group():
    """A 1-rank gloo process group, as DeepSpeed needs one even for a single process."""
    import torch.distributed as dist

    keys = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
            "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    saved = {key: os.environ.get(key) for key in keys}
    created = not dist.is_initialized()
    if created:
        for key, value in keys.items():
            os.environ.setdefault(key, value)
        dist_utils.init_distributed()   # DeepSpeed's, with the environment's op cache
    yield
    # Leave no launcher variables (and no bound store port) behind: later tests start training
    # subprocesses that would inherit them and try to bind the same port.
    if created:
        dist_utils.shutdown()  # also drops DeepSpeed's cached groups for the next module
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def tokenizer():
    """A small byte-level BPE tokenizer trained here (nothing is downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="<eos>")


def _batch(tokenizer) -> torch.Tensor:
    ids = [i for text in TEXTS for i in tokenizer(text)["input_ids"]]
    return torch.tensor(ids[: MICRO_BATCH * SEQ_LEN]).view(MICRO_BATCH, SEQ_LEN)


def _ds_config(stage: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": MICRO_BATCH,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
        "zero_optimization": {"stage": stage},
        "steps_per_print": 10**9,
    }


def _train_and_save(tmp_path: Path, tokenizer, stage: int, model_cfg: dict):
    """Train two steps with DeepSpeed at ``stage``; save in the trainer's checkpoint layout.

    Returns the checkpoint directory and the engine's eval-mode logits on a batch.
    """
    import deepspeed

    torch.manual_seed(0)
    ds_config = _ds_config(stage)
    model = build_model(model_cfg, len(tokenizer), zero3_init=stage == 3, ds_config=ds_config,
                        eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                      config=ds_config)
    batch = _batch(tokenizer)
    for _ in range(2):
        loss = engine(input_ids=batch, labels=batch).loss
        engine.backward(loss)
        engine.step()
    ckpt = tmp_path / f"run_z{stage}" / "checkpoints" / "step_00000002"
    engine.save_checkpoint(str(ckpt), tag="ds")
    engine.module.config.save_pretrained(ckpt / "hf_config")
    tokenizer.save_pretrained(ckpt / "tokenizer")
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 2}))
    (ckpt / "COMPLETE").write_text("ok\n")
    engine.eval()
    with torch.no_grad():
        logits = engine(input_ids=batch).logits.clone()
    return ckpt, logits


def _assert_export_matches(ckpt: Path, out: Path, expected: torch.Tensor, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert main([str(ckpt), str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    exported = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    with torch.no_grad():
        logits = exported(input_ids=_batch(tokenizer)).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    reloaded_tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert reloaded_tok(TEXTS[0])["input_ids"] == tokenizer(TEXTS[0])["input_ids"]
    assert json.loads((out / "megaproc_export.json").read_text())["step"] == 2


@pytest.fixture(scope="module")
def zero0_checkpoint(process_group, tokenizer, tmp_path_factory):
    """A ZeRO-0 checkpoint of the tiny GPT-2 and the engine's logits (shared by tests)."""
    return _train_and_save(tmp_path_factory.mktemp("z0"), tokenizer, 0, {"name": "tiny"})


def test_export_zero0(zero0_checkpoint, tokenizer, tmp_path):
    ckpt, logits = zero0_checkpoint
    _assert_export_matches(ckpt, tmp_path / "hf", logits, tokenizer)


def test_export_zero2(process_group, tokenizer, tmp_path):
    ckpt, logits = _train_and_save(tmp_path, tokenizer, 2, {"name": "tiny"})
    _assert_export_matches(ckpt, tmp_path / "hf", logits, tokenizer)


def test_export_zero3_untied_rotary_model(process_group, tokenizer, tmp_path):
    # ZeRO-3 with construction under zero.Init, on a GPT-NeoX model (untied lm_head, RoPE)
    model_cfg = {"name": "pythia-14m", "config_overrides": "num_hidden_layers=2,hidden_size=64,"
                 "num_attention_heads=2,intermediate_size=128"}
    ckpt, logits = _train_and_save(tmp_path, tokenizer, 3, model_cfg)
    _assert_export_matches(ckpt, tmp_path / "hf", logits, tokenizer)


def test_zero3_init_partitions_and_initialises(process_group):
    import deepspeed
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    torch.manual_seed(0)
    model = build_model({"name": "tiny"}, 300, zero3_init=True, ds_config=_ds_config(3))
    weight = model.transformer.h[0].mlp.c_fc.weight
    assert hasattr(weight, "ds_id")  # partitioned at construction
    with deepspeed.zero.GatheredParameters([weight]):
        assert weight.shape == (64, 256)
        assert weight.std().item() == pytest.approx(0.02, rel=0.15)  # HF init, not torch's
    assert not is_deepspeed_zero3_enabled()  # the switch does not leak out of build_model


def test_load_checkpoint_model(zero0_checkpoint, tokenizer):
    ckpt, logits = zero0_checkpoint
    model = load_checkpoint_model(ckpt)
    assert not model.training
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=_batch(tokenizer)).logits, logits)


def _copy(ckpt: Path, dest: Path) -> Path:
    shutil.copytree(ckpt, dest)
    return dest


def test_refuses_incomplete_checkpoint(zero0_checkpoint, tmp_path, capsys):
    ckpt = _copy(zero0_checkpoint[0], tmp_path / "step_00000002")
    (ckpt / "COMPLETE").unlink()
    assert main([str(ckpt), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "COMPLETE" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_refuses_checkpoint_without_ds_dir(zero0_checkpoint, tmp_path, capsys):
    ckpt = _copy(zero0_checkpoint[0], tmp_path / "step_00000002")
    shutil.rmtree(ckpt / "ds")
    assert main([str(ckpt), str(tmp_path / "out")]) == 2
    assert "ds/" in capsys.readouterr().err


def test_refuses_non_empty_out_dir_unless_overwrite(zero0_checkpoint, tmp_path, capsys):
    ckpt = zero0_checkpoint[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main([str(ckpt), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main([str(ckpt), str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    # no temporary directories are left next to the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_to_empty_existing_dir(zero0_checkpoint, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert export_checkpoint(zero0_checkpoint[0], out) == out
    assert (out / "tokenizer.json").is_file()


def test_mismatched_config_names_missing_keys(zero0_checkpoint, tmp_path):
    ckpt = _copy(zero0_checkpoint[0], tmp_path / "step_00000002")
    config_file = ckpt / "hf_config" / "config.json"
    config = json.loads(config_file.read_text())
    config["n_layer"] = 3
    config_file.write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"missing keys \['transformer\.h\.2\."):
        export_checkpoint(ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_command_line_refusal_exit_code(tmp_path):
    (tmp_path / "ckpt").mkdir()
    proc = subprocess.run([sys.executable, "-m", "megaproc.export", str(tmp_path / "ckpt"),
                           str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "COMPLETE" in proc.stderr


def test_run_dir_instead_of_checkpoint_gets_a_hint(zero0_checkpoint, tmp_path, capsys):
    run_dir = zero0_checkpoint[0].parent.parent
    assert main([str(run_dir), str(tmp_path / "out")]) == 2
    assert "run directory" in capsys.readouterr().err
