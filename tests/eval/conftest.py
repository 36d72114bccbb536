"""Fixtures of the benchmark-evaluator tests: a tiny GPT-2 and byte-level BPE built here
(nothing is downloaded), saved as a HF directory, plus small HellaSwag and EWoK rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

CORPUS = [
    "A man is sitting on a roof. He starts pulling up roofing on a roof.",
    "Home and Garden: How to clean a window. Fill a bucket with warm water and soap.",
    "The woman puts the cake in the oven and waits for it to bake.",
    "Two boys are playing soccer in the park while their dog runs after the ball.",
    "The chef slices the onions and adds them to the hot pan with some oil.",
    "What is 12 + 30? 42. Solve 3*x = 9 for x. 3. Calculate 7 - 10. -3.",
    "The cup is on the table. The ball fell off the shelf and rolled under the bed.",
    "Ali is taller than Bo. The ice melted in the sun. The stone sank in the water.",
] * 10

HELLASWAG_ROWS = [
    {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.",
     "ctx_b": "then", "ctx": "", "endings": [", the man adds wax to the windshield and cuts it.", ", a person board a ski lift, while two men supporting the head of the person wearing winter clothes snow as the we girls sled.", ", the man puts on a christmas coat, knitted with netting.", ", the man continues removing the snow on his car."], "label": "3"},
    {"ind": 18, "activity_label": "Home and Garden", "ctx_a": "[header] How to clean a window [title] Fill a bucket with warm water.",
     "ctx_b": "Add  a few DROPS of soap.", "ctx": "", "endings": ["[step] Stir the water  until it foams.", "Throw the bucket at the window.", "[substeps] Dip a sponge in the water and wipe the glass [title] Dry it with a cloth.", "Eat the soap."], "label": 2},
    {"ind": 25, "activity_label": "Baking cookies", "ctx_a": "A woman puts the cake in the oven.", "ctx_b": "she",
     "ctx": "", "endings": ["waits for it to bake.", "eats the oven.", "runs to the park with her dog and plays soccer for an hour.", "slices the onions."], "label": 0},
    {"ind": 31, "activity_label": "Playing soccer", "ctx_a": "Two boys are playing soccer in the park.", "ctx_b": "the dog",
     "ctx": "", "endings": ["runs after the ball.", "bakes a cake.", "is on the table.", "melted in the sun while the boys watched the game from the roof."], "label": 0},
    {"ind": 40, "activity_label": "Cooking", "ctx_a": "The chef slices the onions.", "ctx_b": "He",
     "ctx": "", "endings": ["adds them to the hot pan with some oil.", "sank in the water.", "fell off the shelf.", "is taller than Bo."], "label": 0},
    {"ind": 52, "activity_label": "Roof repair", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "ctx": "", "endings": ["starts pulling up roofing on a roof.", "is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube."], "label": 0},
]

EWOK_ROWS = [
    {"Domain": "physical-relations", "Context1": "The cup is on the table.", "Context2": "The cup is under the table.",
     "Target1": "The cup is above the table.", "Target2": "The cup is below the table.", "ConceptA": "on"},
    {"Domain": "physical-dynamics", "Context1": "The ice was left in the sun.", "Context2": "The ice was left in the freezer.",
     "Target1": "The ice melted.", "Target2": "The ice stayed frozen.", "ConceptA": "melt"},
    {"Domain": "agent-properties", "Context1": "Ali is taller than Bo.", "Context2": "Bo is taller than Ali.",
     "Target1": "Bo is shorter than Ali.", "Target2": "Ali is shorter than Bo.", "ConceptA": "taller"},
    {"Domain": "physical-dynamics", "Context1": "The stone was dropped in the water.", "Context2": "The stone was dropped in the water.",
     "Target1": "The stone sank.", "Target2": "The stone floated.", "ConceptA": "tie"},
    {"Domain": "physical-relations", "Context1": "The ball fell off the shelf.", "Context2": "The ball stayed on the shelf.",
     "Target1": "The ball rolled under the bed.", "Target2": "The ball is on the shelf.", "ConceptA": "fall"},
]


def make_tokenizer():
    """Byte-level BPE like GPT-2's (no prefix space), ``<|endoftext|>`` as BOS and EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<pad>")


def make_model(tokenizer, seed: int = 0, n_positions: int = 128):
    """A 2-layer, 64-dim GPT-2 with a wide init (logits far from uniform: no accidental ties)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=64, n_layer=2,
                        n_head=4, initializer_range=0.3, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread per test: the tiny models here are all per-op overhead, and on
    shared cores two threads per op run up to ten times slower (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer():
    """The session's tiny tokenizer."""
    return make_tokenizer()


@pytest.fixture(scope="session")
def model(tokenizer):
    """The session's tiny GPT-2 (eval mode)."""
    return make_model(tokenizer)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, model, tokenizer) -> Path:
    """The tiny model and its tokenizer saved with ``save_pretrained`` (an exported run)."""
    out = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_jsonl(path: Path, rows) -> Path:
    """Write ``rows`` (dicts, or raw strings written as they are) one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def continuation_logprob(model, tokenizer, context: str, continuation: str,
                         max_length: int = 128) -> tuple[float, int]:
    """Reference ``log P(continuation | context)``: one unbatched forward over the separately
    tokenized parts (the pair cut to its last ``max_length + 1`` tokens, the final one only a
    label), log-softmax by hand - written independently of megaproc.eval.loglik."""
    ctx = tokenizer.encode(context, add_special_tokens=False)
    cont = tokenizer.encode(continuation, add_special_tokens=False)
    window = (ctx + cont)[-(max_length + 1):]
    inputs, labels = window[:-1], window[1:]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([inputs])).logits[0].double()
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    first = len(inputs) - len(cont)
    total = sum(float(logp[pos, labels[pos]]) for pos in range(first, len(inputs)))
    return total, len(cont)
