"""Model presets, overrides and building (megaproc.models), all offline on CPU."""

from __future__ import annotations

import socket

import pytest
import torch

from megaproc.config import ModelConfig
from megaproc.models import (
    PRESET_NAMES,
    build_model,
    count_parameters,
    model_config,
    parse_overrides,
)

# Published vocabulary sizes, used only to compare parameter counts with the real models.
GPT2_VOCAB, PYTHIA_VOCAB, QWEN3_VOCAB, LLAMA3_VOCAB = 50257, 50304, 151936, 128256

# name -> (vocab, expected parameter count of the published model)
PUBLISHED_SIZES = {
    "gpt2": (GPT2_VOCAB, 124_439_808),
    "gpt2-medium": (GPT2_VOCAB, 354_823_168),
    "gpt2-large": (GPT2_VOCAB, 774_030_080),
    "gpt2-xl": (GPT2_VOCAB, 1_557_611_200),
    "pythia-14m": (PYTHIA_VOCAB, 14_067_712),
    "pythia-70m": (PYTHIA_VOCAB, 70_426_624),
    "pythia-160m": (PYTHIA_VOCAB, 162_322_944),
    "pythia-410m": (PYTHIA_VOCAB, 405_334_016),
    "pythia-1b": (PYTHIA_VOCAB, 1_011_781_632),
    "qwen3-0.6b": (QWEN3_VOCAB, 596_049_920),
    "qwen3-1.7b": (QWEN3_VOCAB, 1_720_574_976),
    "llama3-1b": (LLAMA3_VOCAB, 1_235_814_400),
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test (nothing may download)."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_preset_names_cover_every_family():
    names = set(PRESET_NAMES)
    assert {"tiny", "gpt2", "gpt2-xl", "pythia-160m", "qwen3-0.6b", "llama3-1b"} <= names
    assert set(PUBLISHED_SIZES) | {"tiny", "gpt2:L_H_D"} == names


@pytest.mark.parametrize("name", sorted(PUBLISHED_SIZES))
def test_preset_parameter_count_matches_published_model(name):
    vocab, expected = PUBLISHED_SIZES[name]
    config = model_config(name, vocab)
    assert config.vocab_size == vocab
    # counted on the meta device: no memory is allocated even for the 1.7B model
    assert count_parameters(config) == pytest.approx(expected, rel=0.005)


def test_pythia_hyper_parameters():
    config = model_config("pythia-160m", 1000)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.intermediate_size) == (768, 12, 12, 3072)
    assert config.rope_parameters["partial_rotary_factor"] == 0.25
    assert config.rope_parameters["rope_theta"] == 10000
    assert config.use_parallel_residual is True
    assert config.tie_word_embeddings is False
    assert config.max_position_embeddings == 2048


def test_qwen3_and_llama3_hyper_parameters():
    qwen = model_config("qwen3-0.6b", 1000)
    assert (qwen.hidden_size, qwen.num_hidden_layers, qwen.num_attention_heads,
            qwen.num_key_value_heads, qwen.head_dim) == (1024, 28, 16, 8, 128)
    assert qwen.tie_word_embeddings is True
    llama = model_config("llama3-1b", 1000)
    assert (llama.hidden_size, llama.num_hidden_layers, llama.num_attention_heads,
            llama.num_key_value_heads, llama.intermediate_size) == (2048, 16, 32, 8, 8192)
    assert llama.rope_parameters["rope_type"] == "llama3"
    assert llama.rope_parameters["rope_theta"] == 500000.0
    assert llama.tie_word_embeddings is True


def test_gpt2_sizes_and_custom_gpt2():
    xl = model_config("gpt2-xl", 1000)
    assert (xl.n_layer, xl.n_head, xl.n_embd, xl.n_positions) == (48, 25, 1600, 1024)
    custom = model_config("gpt2:24_16_1024", 1000)
    assert (custom.n_layer, custom.n_head, custom.n_embd) == (24, 16, 1024)
    assert count_parameters(model_config("gpt2:24_16_1024", GPT2_VOCAB)) == \
        count_parameters(model_config("gpt2-medium", GPT2_VOCAB))


@pytest.mark.parametrize("name", ["tiny", "gpt2:2_2_32"])
def test_small_models_instantiate_and_train(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), vocab_size=97)
    ids = torch.randint(0, 97, (2, 16))
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 16, 97)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.transformer.wte.weight.grad is not None


def test_tiny_preset_shape():
    config = model_config("tiny", 100)
    assert (config.n_layer, config.n_head, config.n_embd, config.n_positions) == (2, 2, 64, 1024)


def test_vocab_and_token_ids_come_from_the_caller():
    config = model_config("gpt2", 300)
    assert config.vocab_size == 300
    assert config.bos_token_id is None and config.eos_token_id is None
    config = model_config("pythia-70m", 300, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 0)
    model = build_model({"name": "tiny"}, 50, eos_token_id=3, pad_token_id=0)
    assert model.config.eos_token_id == 3 and model.generation_config.eos_token_id == 3
    assert model_config("tiny", 50, "eos_token_id=7").eos_token_id == 7
    with pytest.raises(ValueError, match="vocab_size.*tokenizer"):
        model_config("tiny", 50, "vocab_size=64")


def test_string_and_mapping_overrides():
    config = model_config("gpt2", 1000, "n_embd=512,n_layer=8,n_head=8")
    assert (config.n_embd, config.n_layer, config.n_head) == (512, 8, 8)
    assert count_parameters(model_config("gpt2", GPT2_VOCAB, "n_embd=512,n_layer=8,n_head=8")) \
        == pytest.approx(51.5e6, rel=0.01)
    config = model_config("pythia-14m", 1000, {"num_hidden_layers": 3, "hidden_act": "relu"})
    assert config.num_hidden_layers == 3 and config.hidden_act == "relu"
    # GPT-2 also accepts the generic HF names for its n_* attributes
    config = model_config("tiny", 1000, "hidden_size=32,num_attention_heads=4")
    assert (config.n_embd, config.n_head) == (32, 4)
    # RoPE scalars live in rope_parameters but can be overridden by name
    config = model_config("pythia-14m", 1000, "rotary_pct=0.5,rope_theta=20000.0")
    assert config.rope_parameters["partial_rotary_factor"] == 0.5
    assert config.rope_parameters["rope_theta"] == 20000.0
    assert model_config("pythia-14m", 1000).rope_parameters["rope_theta"] == 10000.0


def test_parse_overrides_types():
    assert parse_overrides("a=1,b=0.5,c=true,d=False,e=none,f=gelu_new") == \
        {"a": 1, "b": 0.5, "c": True, "d": False, "e": None, "f": "gelu_new"}
    assert parse_overrides("") == {} and parse_overrides(None) == {}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides("n_layer")


def test_unknown_override_key_names_key_and_valid_keys():
    with pytest.raises(ValueError) as err:
        model_config("tiny", 100, "n_embed=128")
    assert "'n_embed'" in str(err.value) and "n_embd" in str(err.value)
    assert "label2id" not in str(err.value)  # generic HF bookkeeping is not offered
    # n_embd is a GPT-2 name, not a GPT-NeoX one
    with pytest.raises(ValueError, match="'n_embd'.*hidden_size"):
        model_config("pythia-70m", 100, "n_embd=128")


def test_unknown_or_malformed_model_names():
    with pytest.raises(ValueError) as err:
        model_config("gpt3", 100)
    assert "gpt3" in str(err.value)
    for name in ("tiny", "pythia-160m", "qwen3-1.7b", "gpt2:L_H_D"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="LAYERS_HEADS_EMBD"):
        model_config("gpt2:12x12", 100)
    with pytest.raises(ValueError, match="not divisible"):
        model_config("gpt2:2_3_64", 100)
    with pytest.raises(ValueError, match="not divisible"):
        model_config("tiny", 100, "n_head=3")


def test_max_position_embeddings_override():
    assert model_config("pythia-160m", 100, max_position_embeddings=4096) \
        .max_position_embeddings == 4096
    assert model_config("tiny", 100, max_position_embeddings=256).n_positions == 256
    model = build_model({"name": "pythia-14m", "max_position_embeddings": 4096,
                         "config_overrides": "num_hidden_layers=1"}, 64)
    ids = torch.randint(0, 64, (1, 3000))  # longer than Pythia's native 2048
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape == (1, 3000, 64)


def test_dropout_override_reaches_every_dropout_field():
    gpt2 = model_config("tiny", 100, dropout=0.0)
    assert gpt2.resid_pdrop == gpt2.embd_pdrop == gpt2.attn_pdrop == 0.0
    pythia = model_config("pythia-14m", 100, dropout=0.1)
    assert pythia.attention_dropout == pythia.hidden_dropout == 0.1
    assert model_config("qwen3-0.6b", 100, dropout=0.2).attention_dropout == 0.2


def test_attention_implementation_defaults_to_sdpa():
    assert build_model({"name": "tiny"}, 50).config._attn_implementation == "sdpa"
    model = build_model({"name": "tiny", "config_overrides": "attn_implementation=eager"}, 50)
    assert model.config._attn_implementation == "eager"


def _tiny_neox():
    return ModelConfig(name="pythia-14m", config_overrides="num_hidden_layers=2,hidden_size=32,"
                       "num_attention_heads=2,intermediate_size=64")


@pytest.mark.parametrize("model_cfg", [ModelConfig(name="tiny"), _tiny_neox()],
                         ids=["gpt2", "gpt_neox"])
def test_pretrained_path_round_trip(tmp_path, model_cfg):
    torch.manual_seed(1)
    model = build_model(model_cfg, vocab_size=120).eval()
    model.save_pretrained(tmp_path / "pretrained")
    loaded = build_model(ModelConfig(name="ignored", pretrained_path=str(tmp_path / "pretrained")),
                         vocab_size=120).eval()
    ids = torch.randint(0, 120, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    assert loaded.dtype == torch.float32


def test_pretrained_vocab_grows_only_when_needed(tmp_path):
    build_model({"name": "tiny"}, vocab_size=100).save_pretrained(tmp_path)
    assert build_model({"pretrained_path": str(tmp_path)}, 100).config.vocab_size == 100
    grown = build_model({"pretrained_path": str(tmp_path)}, 110)
    assert grown.get_input_embeddings().weight.shape[0] == 110
    assert grown.get_output_embeddings().weight.shape[0] == 110
    # a padded pretrained vocabulary larger than the tokenizer is kept as published
    assert build_model({"pretrained_path": str(tmp_path)}, 90).config.vocab_size == 100


def test_pretrained_overrides(tmp_path):
    build_model(_tiny_neox(), vocab_size=64).save_pretrained(tmp_path)
    model = build_model({"pretrained_path": str(tmp_path), "max_position_embeddings": 4096,
                         "dropout": 0.1}, 64, eos_token_id=5)
    assert model.config.max_position_embeddings == 4096
    assert model.config.hidden_dropout == 0.1 and model.config.eos_token_id == 5


def test_pretrained_gpt2_cannot_change_learned_positions(tmp_path):
    build_model({"name": "tiny"}, 50).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="n_positions"):
        build_model({"pretrained_path": str(tmp_path), "max_position_embeddings": 2048}, 50)


def test_missing_pretrained_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        build_model({"pretrained_path": str(tmp_path / "nope")}, 50)


def test_zero3_init_requires_ds_config():
    with pytest.raises(ValueError, match="ds_config"):
        build_model({"name": "tiny"}, 50, zero3_init=True)
