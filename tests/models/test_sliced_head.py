"""The sliced LM head (megaproc/models/sliced_head.py) equals the full head.

For each family megaproc builds (GPT-2 with tied embeddings, GPT-NeoX/Pythia, Llama, Qwen3; tiny
sizes of the presets) and each ``train.loss``: the loss, every parameter's gradient, the per-token
losses and the curriculum's correctness flags computed from the sliced head equal those of the
full ``[B, T, V]`` logits, by both mechanisms (the model's ``logits_to_keep`` and the pre-hook on
the output embedding); and the same through DeepSpeed engines (ZeRO-2 and ZeRO-3, one process).
"""

from __future__ import annotations

import pytest
import torch

from megaproc.data.batch import IGNORE_INDEX
from megaproc.eval.answer_correctness import teacher_forced_correct
from megaproc.loss import token_cross_entropy, training_loss
from megaproc.models import build_model
from megaproc.models.sliced_head import (accepts_logits_to_keep, forward_logits,
                                         gather_before_head, head_positions,
                                         sliced_token_cross_entropy)
from tests.test_export import process_group  # noqa: F401  (the 1-rank gloo group fixture)

VOCAB = 97
SMALL = "num_hidden_layers=2,hidden_size=64,num_attention_heads=4,intermediate_size=128"
FAMILIES = {
    "tiny": "",                                                        # GPT-2, tied lm_head
    "pythia-14m": SMALL,                                               # GPT-NeoX, untied embed_out
    "llama3-1b": SMALL + ",num_key_value_heads=2",
    "qwen3-0.6b": SMALL + ",num_key_value_heads=2,head_dim=16",
}
KINDS = ("weighted", "answer_only", "answer_word")


def make_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model({"name": name, "config_overrides": FAMILIES[name], "dropout": 0.0},
                        vocab_size=VOCAB)
    return model.train()


def make_batch(seed: int = 1) -> dict:
    """Prompt/answer rows of different lengths, right-padded: answers of 1-3 tokens, an eos, a
    boundary flag on the eos of some rows, one row an alternative answer of row 0."""
    g = torch.Generator().manual_seed(seed)
    rows, width = 5, 20
    batch = {key: torch.zeros(rows, width, dtype=torch.bool)
             for key in ("answer_mask", "word_mask", "boundary_mask")}
    batch["input_ids"] = torch.randint(0, VOCAB, (rows, width), generator=g)
    batch["labels"] = torch.full((rows, width), IGNORE_INDEX)
    batch["attention_mask"] = torch.zeros(rows, width, dtype=torch.long)
    for row, (prompt, answer) in enumerate([(9, 1), (14, 2), (6, 3), (16, 2), (9, 2)]):
        length = prompt + answer + 1  # labels: prompt continuation, answer tokens, eos
        batch["attention_mask"][row, :length] = 1
        batch["labels"][row, :length] = torch.randint(0, VOCAB, (length,), generator=g)
        batch["word_mask"][row, prompt:prompt + answer] = True
        batch["answer_mask"][row, prompt:length] = True
        batch["boundary_mask"][row, length - 1] = row % 2 == 0
    batch["example_id"] = torch.tensor([0, 1, 2, 3, 0])
    batch["primary"] = torch.tensor([True, True, True, True, False])
    return batch


def teach(model, batch: dict) -> torch.Tensor:
    """Make the correctness check non-trivial: the answer labels become the model's own greedy
    predictions, and the table of word-continuing tokens holds row 0's boundary prediction
    only, so row 0 is wrong at its boundary, rows 2 and 4 (boundary checked) are right unless
    they predict the same token there, and rows 1 and 3 (no boundary) are right."""
    with torch.no_grad():
        predicted = model(input_ids=batch["input_ids"],
                          attention_mask=batch["attention_mask"]).logits.argmax(dim=-1)
    batch["labels"][batch["word_mask"]] = predicted[batch["word_mask"]]
    table = torch.zeros(VOCAB, dtype=torch.bool)
    table[predicted[0][batch["boundary_mask"][0]]] = True
    return table


def loss_of(kind: str, per_token: torch.Tensor, batch: dict) -> torch.Tensor:
    return training_loss(kind, per_token, batch["labels"], batch["answer_mask"],
                         batch["example_id"], batch["primary"], batch["word_mask"])


def full_step(model, kind: str, batch: dict, table: torch.Tensor):
    """Loss, gradients, per-token losses and correctness flags from the full logits."""
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    per_token = token_cross_entropy(logits, batch["labels"])
    loss = loss_of(kind, per_token, batch)
    loss.backward()
    correct = teacher_forced_correct(logits.detach(), batch["labels"], batch["word_mask"],
                                     batch["boundary_mask"], table)
    return loss.detach(), grads(model), per_token.detach(), correct


def sliced_step(model, kind: str, batch: dict, table: torch.Tensor, mechanism: str):
    """The same from the sliced head, by ``logits_to_keep`` or by the output-embedding hook."""
    model.zero_grad()
    positions = head_positions(kind, batch["labels"], batch["answer_mask"], batch["word_mask"],
                               batch["boundary_mask"])
    assert positions is not None and positions.sum() < positions.numel()
    if mechanism == "logits_to_keep":
        assert accepts_logits_to_keep(model)
        logits = forward_logits(model, batch["input_ids"], batch["attention_mask"], positions)
    else:
        with gather_before_head(model, positions):
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (int(positions.sum()), VOCAB)
    per_token = sliced_token_cross_entropy(logits, batch["labels"], positions)
    loss = loss_of(kind, per_token, batch)
    loss.backward()
    correct = teacher_forced_correct(logits.detach(), batch["labels"], batch["word_mask"],
                                     batch["boundary_mask"], table, positions=positions)
    return loss.detach(), grads(model), per_token.detach(), correct


def grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same(full, sliced) -> None:
    (loss, grad, per_token, correct), (loss_s, grad_s, per_token_s, correct_s) = full, sliced
    assert torch.allclose(loss_s, loss, rtol=1e-5, atol=1e-7), (loss_s, loss)
    assert grad_s.keys() == grad.keys() and grad
    for name, value in grad.items():
        assert torch.allclose(grad_s[name], value, rtol=1e-4, atol=1e-7), name
    assert torch.equal(correct_s, correct)
    read = per_token_s != 0  # the sliced per-token losses are the full ones where they exist
    assert torch.allclose(per_token_s[read], per_token[read], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mechanism", ["logits_to_keep", "hook"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_sliced_loss_gradients_and_correctness_equal_the_full_head(name, mechanism):
    model, batch = make_model(name), make_batch()
    table = teach(model, batch)
    for kind in KINDS:
        full = full_step(model, kind, batch, table)
        assert full[0] > 0 and full[1]
        assert not full[3][0] and full[3][1] and full[3][3]  # the boundary decides row 0
        assert_same(full, sliced_step(model, kind, batch, table, mechanism))


def test_positions_cover_what_loss_and_correctness_read():
    batch = make_batch()
    labels, answer, word, boundary = (batch[k] for k in ("labels", "answer_mask", "word_mask",
                                                         "boundary_mask"))
    assert head_positions("mean", labels, answer, word, boundary) is None
    full_rows = torch.zeros_like(labels)
    assert head_positions("weighted", full_rows, answer, word, boundary) is None  # no padding
    assert torch.equal(head_positions("weighted", labels, answer, word, boundary),
                       labels != IGNORE_INDEX)
    assert torch.equal(head_positions("answer_only", labels, answer, word, boundary),
                       answer | boundary)
    assert torch.equal(head_positions("answer_word", labels, answer, word, boundary),
                       word | boundary)
    # Without a word mask the answer mask stands in for it (batch contract of collate).
    assert torch.equal(head_positions("answer_word", labels, answer, None, None), answer)


def ds_engine(name: str, stage: int):
    import deepspeed

    model = make_model(name)
    config = {"train_micro_batch_size_per_gpu": 5, "gradient_accumulation_steps": 1,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
              "zero_optimization": {"stage": stage}, "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                      config=config)
    return engine


def engine_step(engine, batch: dict, sliced: bool):
    """Loss and full (gathered) gradients after one backward through a DeepSpeed engine."""
    from deepspeed.utils import safe_get_full_grad

    positions = head_positions("answer_word", batch["labels"], batch["answer_mask"],
                               batch["word_mask"], batch["boundary_mask"]) if sliced else None
    logits = forward_logits(engine, batch["input_ids"], batch["attention_mask"], positions)
    loss = loss_of("answer_word", sliced_token_cross_entropy(logits, batch["labels"], positions),
                   batch)
    engine.backward(loss)
    return loss.detach(), {name: safe_get_full_grad(p).clone()
                           for name, p in engine.module.named_parameters()}


@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("name", ["tiny", "pythia-14m"])
def test_sliced_head_through_deepspeed_engines(process_group, name, stage):  # noqa: F811
    batch = make_batch()
    loss, grad = engine_step(ds_engine(name, stage), batch, sliced=False)
    loss_s, grad_s = engine_step(ds_engine(name, stage), batch, sliced=True)
    assert torch.allclose(loss_s, loss, rtol=1e-5, atol=1e-7)
    assert grad_s.keys() == grad.keys() and len(grad) > 5
    for key, value in grad.items():
        assert value.abs().sum() > 0 or "bias" in key, key  # real gradients, not empty shards
        assert torch.allclose(grad_s[key], value, rtol=1e-4, atol=1e-7), key


def test_answer_only_validation_metrics_equal_the_full_head():
    from megaproc.eval.forward import ModelForward
    from megaproc.eval.lm import batch_lm_sums, lm_summary

    model, batch = make_model("pythia-14m").eval(), make_batch()
    teach(model, batch)  # some answer tokens predicted right: token accuracy strictly inside (0, 1)
    forward = ModelForward(model)
    full = lm_summary(batch_lm_sums(forward, batch, mask_key="answer_mask"))
    sliced = lm_summary(batch_lm_sums(forward, batch, mask_key="answer_mask", sliced=True))
    assert sliced["num_tokens"] == full["num_tokens"] == int(batch["answer_mask"].sum())
    assert 0 < full["val_token_acc"] < 1 and sliced["val_token_acc"] == full["val_token_acc"]
    assert sliced["val_loss"] == pytest.approx(full["val_loss"], rel=1e-6)
