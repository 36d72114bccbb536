"""Weight-group transfer and freezing (``model.init_from``, ``weights_to_transfer``/``_to_train``).

Unit checks build models in-process; the training check runs the real trainer on 2 CPU ranks
under ZeRO-2 and ZeRO-3 and compares the trained checkpoint with the source and with the fresh
initialisation the same seed draws without transfer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from megaproc.config import load_config
from megaproc.errors import ConfigError
from megaproc.models import build_model
from megaproc.models.transfer import (expand_groups, freeze_weights, parameter_group,
                                      transfer_weights)
from tests.launch import FAST, run

GROUP_OF = {  # written from the spec's group maps, independently of the regexes
    "transformer.wte.weight": "embed", "transformer.wpe.weight": "embed",
    "transformer.h.0.ln_1.weight": "ln", "transformer.h.0.attn.c_attn.weight": "attn",
    "transformer.h.0.attn.c_proj.bias": "attn", "transformer.h.1.ln_2.bias": "ln",
    "transformer.h.1.mlp.c_fc.weight": "ffn", "transformer.h.1.mlp.c_proj.weight": "ffn",
    "transformer.ln_f.weight": "ln",
}


def tiny(vocab: int = 300, seed: int = 0, name: str = "tiny"):
    torch.manual_seed(seed)
    return build_model({"name": name, "config_overrides": ""}, vocab_size=vocab)


def model_cfg(**overrides):
    return load_config(None, [f"model.{k}={v}" for k, v in overrides.items()]).model


def test_group_maps_of_the_three_families():
    for name, group in GROUP_OF.items():
        assert parameter_group(name, "gpt2") == group
    neox = {"gpt_neox.embed_in.weight": "embed", "gpt_neox.layers.0.attention.dense.bias": "attn",
            "gpt_neox.layers.0.attention.query_key_value.weight": "attn",
            "gpt_neox.layers.0.mlp.dense_4h_to_h.weight": "ffn",
            "gpt_neox.layers.0.post_attention_layernorm.weight": "ln",
            "gpt_neox.final_layer_norm.bias": "ln", "embed_out.weight": "embed"}
    llama = {"model.embed_tokens.weight": "embed", "model.layers.3.self_attn.v_proj.weight": "attn",
             "model.layers.3.mlp.gate_proj.weight": "ffn", "model.norm.weight": "ln",
             "model.layers.0.input_layernorm.weight": "ln", "lm_head.weight": "embed"}
    for name, group in neox.items():
        assert parameter_group(name, "gpt_neox") == group, name
    for name, group in llama.items():
        assert parameter_group(name, "llama") == group and parameter_group(name, "qwen3") == group
    for preset in ("tiny", "pythia-14m", "qwen3-0.6b"):  # every parameter has exactly one group
        with torch.device("meta"):
            m = build_model({"name": preset, "config_overrides": "num_hidden_layers=1"
                             if preset != "tiny" else ""}, vocab_size=64)
        groups = {parameter_group(n, m.config.model_type) for n, _ in m.named_parameters()}
        assert groups == {"attn", "ffn", "ln", "embed"}
    assert expand_groups(["everything"]) == {"attn", "ffn", "ln", "embed"}


def test_everything_with_average_embeddings_across_vocabularies(tmp_path):
    source = tiny(vocab=280, seed=1)
    source.save_pretrained(tmp_path / "src")
    fresh = tiny(vocab=300, seed=2)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    transfer_weights(fresh, model_cfg(init_from=str(tmp_path / "src"), embedding_strategy="average"))
    src = source.state_dict()
    mean_row = src["transformer.wte.weight"].mean(dim=0)
    wte = fresh.state_dict()["transformer.wte.weight"]
    assert wte.shape == (300, before["transformer.wte.weight"].shape[1])
    assert torch.allclose(wte, mean_row.expand_as(wte))  # every row the mean source embedding
    for name, tensor in fresh.state_dict().items():
        if "wte" not in name and "lm_head" not in name:
            assert torch.equal(tensor, src[name]), name
    retained = tiny(vocab=300, seed=2)
    transfer_weights(retained, model_cfg(init_from=str(tmp_path / "src"), embedding_strategy="retain"))
    assert torch.equal(retained.state_dict()["transformer.wte.weight"], before["transformer.wte.weight"])


def test_different_architecture_and_missing_tensor_are_one_line_errors(tmp_path):
    with torch.device("cpu"):
        other = build_model({"name": "pythia-14m", "config_overrides": "num_hidden_layers=1"},
                            vocab_size=300)
    other.save_pretrained(tmp_path / "neox")
    with pytest.raises(ConfigError, match="gpt_neox model cannot initialise a gpt2 model"):
        transfer_weights(tiny(), model_cfg(init_from=str(tmp_path / "neox")))
    deeper = build_model({"name": "tiny", "config_overrides": "n_layer=3"}, vocab_size=300)
    with pytest.raises(ConfigError, match="source has no tensor transformer.h.2"):
        src = tiny()
        src.save_pretrained(tmp_path / "shallow")
        transfer_weights(deeper, model_cfg(init_from=str(tmp_path / "shallow")))


def test_freezing_leaves_only_the_named_groups_trainable():
    m = tiny()
    freeze_weights(m, ["ffn", "ln"])
    for name, param in m.named_parameters():
        assert param.requires_grad == (GROUP_OF.get(name, parameter_group(name, "gpt2")) in ("ffn", "ln"))
    with pytest.raises(ValueError, match="must be among"):
        load_config(None, ["model.weights_to_train=[mlp]"])


def _ckpt_state(run_dir: Path) -> dict:
    from megaproc.checkpoint import latest_checkpoint, load_checkpoint_model

    return load_checkpoint_model(latest_checkpoint(run_dir)).state_dict()


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer") / "source"
    proc = run(1, FAST + [f"run.out_dir={out}", "train.max_steps=4", "run.seed=7"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_attn_transfer_with_ffn_training_on_two_ranks(tmp_path, source_run, stage):
    from megaproc.models.run_model import build_run_model
    from megaproc.runs import resolve, run_kind
    from megaproc.trainer import seed_everything

    out = tmp_path / "target"
    overrides = FAST + [f"deepspeed.config=ds_configs/zero{stage}.json", f"run.out_dir={out}",
                        "train.max_steps=3", f"model.init_from=latest:{source_run}",
                        "model.weights_to_transfer=[attn]", "model.weights_to_train=[ffn]"]
    proc = run(2, overrides)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "transfer:" in proc.stdout and "tensors copied" in proc.stdout
    report = json.loads((out / "transfer.json").read_text())
    for name, row in report.items():
        assert row["copied"] == (row["group"] == "attn") and row["trainable"] == (row["group"] == "ffn")
    trained, source = _ckpt_state(out), _ckpt_state(source_run)
    # The fresh initialisation the trainer draws without transfer (same seed, same order).
    from tests.launch import QUICKSTART

    cfg = resolve(load_config(QUICKSTART, [o for o in overrides if not o.startswith(
        ("model.init_from", "model.weights_to_"))]))
    seed_everything(cfg.run.seed)
    fresh, _ = build_run_model(cfg.model, run_kind(cfg).build_tokenizer(), {}, 0, 1)
    fresh = fresh.state_dict()
    changed = 0
    for name, tensor in trained.items():
        group = parameter_group(name, "gpt2")
        if group == "attn":
            assert torch.equal(tensor, source[name]), name
        elif group in ("ln", "embed"):
            assert torch.equal(tensor, fresh[name]), name
        else:
            changed += not torch.equal(tensor, fresh[name])
    assert changed == sum(parameter_group(n, "gpt2") == "ffn" for n in trained)


def _word_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<eos>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def test_partial_matching_copies_rows_of_shared_tokens(tmp_path):
    src_tok = _word_tokenizer(["apple", "pear", "plum", "fig"])
    own_tok = _word_tokenizer(["kiwi", "fig", "apple", "lime", "date"])
    source = build_model({"name": "tiny", "config_overrides": ""}, vocab_size=len(src_tok))
    source.save_pretrained(tmp_path / "src")
    src_tok.save_pretrained(tmp_path / "src")
    fresh = tiny(vocab=len(own_tok), seed=3)
    before = fresh.state_dict()["transformer.wte.weight"].clone()
    transfer_weights(fresh, model_cfg(init_from=str(tmp_path / "src"),
                                      embedding_strategy="partial_matching"), own_tok)
    wte, src_wte = fresh.state_dict()["transformer.wte.weight"], source.state_dict()["transformer.wte.weight"]
    src_ids, own_ids = src_tok.get_vocab(), own_tok.get_vocab()
    for token, row in own_ids.items():
        if token in src_ids:   # <eos>, fig, apple
            assert torch.equal(wte[row], src_wte[src_ids[token]]), token
        else:                  # kiwi, lime, date keep their fresh rows
            assert torch.equal(wte[row], before[row]), token


def test_gradient_checkpointing_gives_the_same_gradients():
    from megaproc.models.run_model import build_run_model
    from megaproc.runs import resolve, run_kind

    grads = []
    for checkpointing in (False, True):
        cfg = resolve(load_config(None, ["model.name=tiny",
                                         f"model.gradient_checkpointing={checkpointing}"]))
        torch.manual_seed(0)
        model, _ = build_run_model(cfg.model, run_kind(cfg).build_tokenizer(), {}, 0, 1)
        model.train()
        assert model.is_gradient_checkpointing == checkpointing
        ids = torch.arange(24).reshape(2, 12) % 50
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name
