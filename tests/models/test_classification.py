"""Sequence classifiers: shapes, encodings, finetune freezing, full-size parameter counts."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen3Config,
                          Qwen3ForCausalLM)

from megaproc.loss import classification_loss
from megaproc.models.classification import (CLASSIFIER_PRESETS, build_classifier,
                                            count_classifier_parameters)

SYMBOLS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A word-level tokenizer over digits and specials (offline, built here)."""
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", "<unk>", *SYMBOLS, "x"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    path = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(path)
    return path


def save_tiny(tmp_path_factory, tokenizer_dir, kind: str):
    """A 3-block pretrained-looking causal LM directory (config, weights and tokenizer)."""
    torch.manual_seed(0)
    common = dict(vocab_size=15, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if kind == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=8, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    path = tmp_path_factory.mktemp(kind)
    model.save_pretrained(path)
    PreTrainedTokenizerFast.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory, tokenizer_dir):
    return save_tiny(tmp_path_factory, tokenizer_dir, "qwen3")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tokenizer_dir):
    return save_tiny(tmp_path_factory, tokenizer_dir, "llama")


def one_step(model, encode, sequences, labels):
    """One AdamW step on a right-padded batch; returns the parameters before the step."""
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = [encode(s) for s in sequences]
    width = max(map(len, ids))
    input_ids = torch.tensor([i + [encode.pad_id] * (width - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    _, loss = classification_loss(model(input_ids, mask).logits, torch.tensor(labels))
    loss.backward()
    optimizer.step()
    return before


@pytest.mark.parametrize("wrapper,fixture,top", [("qwen3_finetune", "qwen_dir", 1),
                                                 ("llama3_finetune", "llama_dir", 2),
                                                 ("deepseek_finetune", "llama_dir", 0)])
def test_finetune_changes_only_top_blocks_and_head(request, wrapper, fixture, top):
    path = request.getfixturevalue(fixture)
    model, encode = build_classifier({"name": wrapper, "pretrained_path": str(path)},
                                     {"target_func": "fn_a", "sequence_length": 6,
                                      "num_layers_to_finetune": top})
    assert encode("0110") == [4, 5, 5, 4]            # "0 1 1 0" through the word-level vocab
    before = one_step(model, encode, ["011010", "0110", "111111", "000"], [1, 0, 0, 0])
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    expected_blocks = {f"backbone.layers.{i}." for i in range(3 - top, 3)}
    for name, _ in model.named_parameters():
        should_change = name.startswith("head.") or any(name.startswith(b) for b in expected_blocks)
        assert (name in changed) == should_change, name
    assert {"head.weight", "head.bias"} <= changed
    # the pretrained weights of the frozen part are the saved ones
    reloaded = LlamaForCausalLM if fixture == "llama_dir" else Qwen3ForCausalLM
    saved = reloaded.from_pretrained(path).model.embed_tokens.weight
    assert torch.equal(model.backbone.embed_tokens.weight, saved)


def test_finetune_refusals(qwen_dir, llama_dir, tmp_path):
    task = {"target_func": "fn_a", "sequence_length": 6, "num_layers_to_finetune": 1}
    with pytest.raises(ValueError, match="expects a llama model.*model_type 'qwen3'"):
        build_classifier({"name": "llama3_finetune", "pretrained_path": str(qwen_dir)}, task)
    with pytest.raises(ValueError, match="no config.json"):
        build_classifier({"name": "qwen3_finetune", "pretrained_path": str(tmp_path)}, task)
    with pytest.raises(ValueError, match=r"num_layers_to_finetune must be in \[0, 3\]"):
        build_classifier({"name": "qwen3_finetune", "pretrained_path": str(qwen_dir)},
                         dict(task, num_layers_to_finetune=4))
    with pytest.raises(ValueError, match="not a sequence classifier"):
        build_classifier({"name": "gpt2"}, task)


@pytest.mark.parametrize("name", [n for n in CLASSIFIER_PRESETS if n.endswith("-cpu")])
def test_from_scratch_shapes_and_padding(name):
    torch.manual_seed(0)
    model, encode = build_classifier({"name": name}, {"target_func": "fn_a", "sequence_length": 8})
    assert encode("01100111") == [2, 0, 1, 1, 0, 0, 1, 1, 1]     # BOS = 2, then the bits
    assert model.config.vocab_size == 3 and model.config.max_position_embeddings == 10
    model.eval()
    batch = torch.tensor([encode("01100111"), encode("11110000")])
    logits = model(batch, torch.ones_like(batch)).logits
    assert logits.shape == (2,)
    # right padding: the head reads the last real token, so the logit does not change
    short = torch.tensor([encode("0110") + [encode.pad_id] * 4])
    mask = torch.tensor([[1] * 5 + [0] * 4])
    alone = model(torch.tensor([encode("0110")])).logits
    torch.testing.assert_close(model(short, mask).logits, alone)


def test_decimal_vocabulary_and_overrides():
    model, encode = build_classifier({"name": "llama3-cpu", "config_overrides": "num_hidden_layers=1",
                                      "max_position_embeddings": 40},
                                     {"target_func": "fn_i", "sequence_length": 5})
    assert encode("90210") == [10, 9, 0, 2, 1, 0]                # digits, BOS = 10
    assert model.config.vocab_size == 11 and model.config.num_hidden_layers == 1
    assert model.config.max_position_embeddings == 40            # larger than L + 2 is kept
    model, _ = build_classifier({"name": "qwen0.6B-cpu"},
                                {"target_func": "fn_a", "sequence_length": 5, "vocab_size": 8})
    assert model.config.vocab_size == 8
    with pytest.raises(ValueError, match="vocab_size 3 is too small for fn_k"):
        build_classifier({"name": "qwen0.6B-cpu"},
                         {"target_func": "fn_k", "sequence_length": 5, "vocab_size": 3})


# Published parameter counts of the imitated models (their model pages) and their input
# embedding sizes.  A classifier has no LM head and a 3-token embedding, so
#   ours - 3 * hidden - (hidden + 1)  ==  published - vocab * hidden * (1 if tied else 2).
# Llama-3.2-1B and deepseek-coder-1.3b-base publish exact totals (safetensors metadata): the
# tolerance there is 0.1%.  Qwen3 publishes rounded non-embedding counts (0.44B, 1.4B), so the
# tolerance is half a unit of the last published digit (0.005B, 0.05B).
PUBLISHED = {
    "llama3": (1_235_814_400, 128_256, 2048, True, 0.001 * 1_235_814_400),
    "deepseek": (1_346_471_936, 32_256, 2048, False, 0.001 * 1_346_471_936),
    "qwen0.6B": (None, 151_936, 1024, True, 0.005e9),
    "qwen1.7B": (None, 151_936, 2048, True, 0.05e9),
}
PUBLISHED_NON_EMBEDDING = {"qwen0.6B": 0.44e9, "qwen1.7B": 1.4e9}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_full_size_parameter_counts(name):
    total, vocab, hidden, tied, tolerance = PUBLISHED[name]
    ours = count_classifier_parameters(name, "fn_a", 100)
    non_embedding = ours - 3 * hidden - (hidden + 1)
    if total is None:
        expected = PUBLISHED_NON_EMBEDDING[name]
    else:
        expected = total - vocab * hidden * (1 if tied else 2)
    assert abs(non_embedding - expected) <= tolerance, (name, non_embedding, expected)
