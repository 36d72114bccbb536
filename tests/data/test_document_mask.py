"""Document masking of packed samples (megaproc/data/document_mask.py) against Megatron-LM.

megatron-core's ``_get_ltor_masks_and_position_ids`` (megatron/core/datasets/gpt_dataset.py) is
the reference: on random token rows with EODs (first, last, consecutive, none, a pad id equal
to the EOD id), for every combination of the three switches, the batch's position ids, the
block-causal attention of its document ids and the labels left to train equal Megatron's
position ids, attention mask and loss mask on each row's real tokens; padding stays out of
every document.  The training loss with ``eod_mask_loss`` (through the ``lm`` kind's
``forward_loss``, full and sliced head) is the token mean over exactly Megatron's loss mask, the logits computed
in the test from Megatron's masks and positions.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megaproc.config import Config
from megaproc.data.batch import IGNORE_INDEX, collate
from megaproc.data.document_mask import PAD_DOCUMENT, DocumentMasking, document_masking
from megaproc.errors import ConfigError
from megaproc.models import build_model
from megaproc.models.document_attention import block_causal_attention
from megaproc.runs.lm import LMRun
from tests.models.test_document_attention import one_torch_thread  # noqa: F401 (autouse)

EOD, PAD, VOCAB, WIDTH = 3, 1, 12, 24  # samples of WIDTH + 1 tokens
SWITCHES = list(itertools.product([False, True], repeat=3))


def megatron_masks():
    """megatron-core's reference function (a failing import fails the test, never skips)."""
    with warnings.catch_warnings():
        # megatron.core warns on CPU that Transformer Engine / Apex are absent; unused here.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        from megatron.core.datasets.gpt_dataset import _get_ltor_masks_and_position_ids
    return _get_ltor_masks_and_position_ids


class _Tokenizer:
    """The one attribute document_masking reads of a tokenizer."""

    def __init__(self, eos_token_id):
        self.eos_token_id = eos_token_id


def random_samples(seed: int, count: int = 40) -> list[dict]:
    """Token rows of 2..WIDTH+1 tokens, ~1 in 4 an EOD, plus the edge cases."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        length = int(rng.integers(2, WIDTH + 2))
        tokens = rng.integers(4, VOCAB, length)
        tokens[rng.random(length) < 0.25] = EOD
        samples.append(tokens)
    edge = np.full(WIDTH + 1, 5)
    samples += [edge.copy(),                                   # no EOD at all
                np.full(WIDTH + 1, EOD),                       # only EODs
                np.r_[EOD, edge[1:]],                          # EOD first
                np.r_[edge[:WIDTH - 1], EOD, 6],               # EOD the last input
                np.r_[edge[:WIDTH], EOD],                      # EOD only a label
                np.r_[5, EOD, EOD, EOD, 6, 7, EOD, 8]]         # consecutive (empty documents)
    return [{"tokens": t.astype(np.int64)} for t in samples]


@pytest.mark.parametrize("pad_id", [PAD, EOD])
@pytest.mark.parametrize("switches", SWITCHES)
def test_positions_attention_and_loss_mask_equal_megatrons(switches, pad_id):
    reference = megatron_masks()
    reset_positions, reset_attention, eod_loss = switches
    samples = random_samples(seed=sum(switches) + 10 * pad_id)
    plain = collate(samples, pad_id, pad_to=WIDTH + 1)
    masking = document_masking(_Tokenizer(EOD), *switches, what="test")
    batch = collate(samples, pad_id, pad_to=WIDTH + 1, documents=masking)
    if not any(switches):
        assert masking is None
    assert ("position_ids" in batch) == reset_positions
    assert ("document_ids" in batch) == reset_attention
    for key in plain:  # nothing else changes
        if key != "labels":
            assert torch.equal(batch[key], plain[key]), key
    allowed = block_causal_attention(batch["document_ids"]) if reset_attention else None
    for r, sample in enumerate(samples):
        inputs = torch.as_tensor(sample["tokens"][:-1])
        n = len(inputs)
        attention, loss_mask, positions = reference(inputs, EOD, reset_positions,
                                                    reset_attention, eod_loss, True)
        trained = batch["labels"][r] != IGNORE_INDEX
        assert torch.equal(trained[:n], loss_mask.bool()), r
        assert not trained[n:].any()
        if reset_positions:
            assert torch.equal(batch["position_ids"][r, :n], positions), r
        if reset_attention:
            # Megatron's mask is True where attention is *forbidden*.
            assert torch.equal(allowed[r, :n, :n], ~attention[0]), r
            assert (batch["document_ids"][r, n:] == PAD_DOCUMENT).all()
            assert not allowed[r, :n, n:].any() and not allowed[r, n:, :n].any()
            assert allowed[r].any(dim=-1).all()  # no empty attention row (pads see pads)


def test_a_tokenizer_without_eos_is_refused():
    assert document_masking(_Tokenizer(None), what="x") is None  # all switches off: fine
    with pytest.raises(ConfigError, match="--eod-mask-loss: .*EOS"):
        document_masking(_Tokenizer(None), eod_mask_loss=True, what="--eod-mask-loss")


@pytest.mark.parametrize("loss, sliced", [("mean", False), ("weighted", True)])
def test_eod_mask_loss_trains_exactly_megatrons_loss_mask(loss, sliced):
    reference = megatron_masks()
    samples = random_samples(seed=7, count=6)
    cfg = Config()
    cfg.train.loss, cfg.train.sliced_head = loss, sliced
    torch.manual_seed(0)
    model = build_model({"name": "tiny", "dropout": 0.0}, vocab_size=VOCAB).eval()
    batch = collate(samples, PAD, pad_to=WIDTH + 1,
                    documents=DocumentMasking(EOD, True, True, True))
    with torch.no_grad():
        out = LMRun(cfg).forward_loss(model, batch, torch.device("cpu"))
    if sliced:
        assert batch["head_positions"].sum() < batch["head_positions"].numel()

    total, count = 0.0, 0
    for sample in samples:  # each row from Megatron's masks and positions alone
        tokens = torch.as_tensor(sample["tokens"])
        inputs, targets = tokens[:-1], tokens[1:]
        attention, loss_mask, positions = reference(inputs, EOD, True, True, True, True)
        with torch.no_grad():
            logits = model(input_ids=inputs[None], position_ids=positions[None],
                           attention_mask=~attention[None]).logits[0]
        per_token = F.cross_entropy(logits, targets, reduction="none")
        total += float((per_token * loss_mask).sum())
        count += int(loss_mask.sum())
    assert count < sum(len(s["tokens"]) - 1 for s in samples)  # EOD inputs were dropped
    assert int(out.mask.sum()) == count
    assert float(out.loss) == pytest.approx(total / count, rel=1e-5)
