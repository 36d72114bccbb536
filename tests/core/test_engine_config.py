"""DeepSpeed config filling: one source of truth, conflicts are errors."""

import json

import pytest

from megaproc.config import ConfigError, load_config
from megaproc.engine import build_ds_config, param_groups
from megaproc.schedules import lr_multiplier


def test_fills_batch_clipping_precision_and_optimizer():
    cfg = load_config(None, ["train.micro_batch=3", "train.grad_accum=4", "train.grad_clip=0.5",
                             "optim.lr=2e-4", "optim.eps=1e-8", "deepspeed.config=ds_configs/zero3.json"])
    ds = build_ds_config(cfg, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 24
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False  # CPU: fp32
    params = ds["optimizer"]["params"]
    assert ds["optimizer"]["type"] == "AdamW" and params["torch_adam"] is True
    assert params["lr"] == 2e-4 and params["eps"] == 1e-8 and params["betas"] == [0.9, 0.999]


def test_disagreeing_value_in_json_is_an_error(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 2}}))
    cfg = load_config(None, ["train.micro_batch=2", f"deepspeed.config={path}"])
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu"):
        build_ds_config(cfg, 1)
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 2, "gradient_clipping": "auto"}))
    assert build_ds_config(cfg, 1)["train_micro_batch_size_per_gpu"] == 2
    path.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(ConfigError, match="optim"):
        build_ds_config(cfg, 1)


def test_missing_ds_json_is_named():
    cfg = load_config(None, ["deepspeed.config=ds_configs/nope.json"])
    with pytest.raises(ConfigError, match="nope.json"):
        build_ds_config(cfg, 1)


def test_schedules():
    assert lr_multiplier(0, "warmup_constant", 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(9, "warmup_constant", 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_multiplier(50, "warmup_constant", 10, 100, 0.1) == 1.0
    assert lr_multiplier(10, "cosine", 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_multiplier(55, "cosine", 10, 100, 0.1) == pytest.approx(0.55)
    assert lr_multiplier(100, "cosine", 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(500, "cosine", 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(3, "constant", 10, 100, 0.1) == 1.0


def test_no_weight_decay_on_biases_and_norms():
    import transformers

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == total
