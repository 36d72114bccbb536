"""Batch source and sharded evaluation for boolean-function sequence classification.

Data
    The train and test splits of :func:`megaproc.synthetic.boolean_data.load_or_make_splits`
    for ``classify.target_func``/``sequence_length``/sizes and ``run.seed`` (cached; local rank
    0 of each node builds first, the other ranks read its files), every sequence encoded once by
    the classifier's encoder (:func:`megaproc.models.classification.classifier_encoder`) and
    right-padded to the longest encoding of both splits, so every batch has the same width.

Global order
    Global sample ``g`` is training example ``perm(seed, g // N)[g % N]`` with ``N`` the train
    size: epoch ``e`` is a seeded permutation of the train split that depends on ``(seed, e)``
    only (``random.Random`` from a hash of both, CPython's stable shuffle), never on the number
    of epochs, the world size or the batch size; an optimizer step may straddle two epochs.
    Rank ``r`` of ``W`` takes its slice of each micro-batch exactly as
    :func:`megaproc.data.batch.rank_sample_indices` lays it out.  The position is the global
    consumed-sample count, so a resume continues the order exactly, also with another world size.

Batches
    dicts of CPU tensors ``input_ids`` [B, T] (int64), ``attention_mask`` [B, T] (int64, 0 on
    padding), ``labels`` [B] (float32 0/1) and ``source`` [B] (zeros: one source, ``boolean``).

Evaluation
    :meth:`ClassifyBatchSource.evaluate` runs a ``logits_fn(input_ids, attention_mask) -> [B]``
    over a whole split: batch ``b`` (examples ``bB .. bB + B - 1``) is on rank ``b % W``, every
    rank runs the same number of forwards of ``B`` rows (rows past the split and a rank's dummy
    forward repeat example 0, not counted, as ZeRO-3 needs all ranks in every forward), and the
    batch sums are gathered and added in batch order
    (:func:`megaproc.eval.sharding.run_in_lockstep`).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import OrderedDict
from typing import Callable, Sequence

import torch

from megaproc.data.batch import rank_sample_indices
from megaproc.errors import ResumeError
from megaproc.eval.sharding import run_in_lockstep
from megaproc.loss import classification_loss

SOURCE_NAME = "boolean"
SPLITS = ("train", "test")
_PERMUTATIONS_KEPT = 4            # epochs whose permutation is kept (a step spans at most two)


def epoch_permutation(seed: int, epoch: int, size: int) -> list[int]:
    """The order of the ``size`` training examples in ``epoch`` (a function of seed and epoch)."""
    digest = hashlib.sha256(f"megaproc-classify-order|{seed}|{epoch}".encode()).digest()
    order = list(range(size))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return order


def collate_classify(encoded: Sequence[list[int]], labels: Sequence[int], width: int,
                     pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded sequences to ``width`` into the batch dict of the module docstring."""
    batch = len(encoded)
    input_ids = torch.full((batch, width), int(pad_id), dtype=torch.int64)
    attention = torch.zeros((batch, width), dtype=torch.int64)
    for row, ids in enumerate(encoded):
        if len(ids) > width:
            raise ValueError(f"sequence of {len(ids)} ids does not fit width {width}")
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
        attention[row, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention,
            "labels": torch.tensor(list(labels), dtype=torch.float32),
            "source": torch.zeros(batch, dtype=torch.int64)}


class ClassifyBatchSource:
    """Epochs of an encoded train split for one rank (the trainer's ``BatchSource`` protocol)."""

    def __init__(self, train: Sequence[tuple[list[int], int]],
                 test: Sequence[tuple[list[int], int]], micro_batch: int, grad_accum: int,
                 world_size: int, rank: int, seed: int, pad_id: int,
                 dataset_id: str = "", log: Callable[[str], None] | None = None,
                 data_notes: dict | None = None):
        if not train:
            raise ValueError("the classification train split is empty")
        self.examples = {"train": list(train), "test": list(test)}
        self.micro_batch, self.grad_accum = int(micro_batch), int(grad_accum)
        self.world_size, self.rank = int(world_size), int(rank)
        self.seed, self.pad_id = int(seed), int(pad_id)
        self.dataset_id = dataset_id
        self.data_notes = dict(data_notes or {})  # how the splits were drawn (metrics.json)
        self.width = max(len(ids) for split in self.examples.values() for ids, _ in split)
        self.names = [SOURCE_NAME]
        self.log = log or (lambda message: None)
        self._consumed = 0
        self._orders: OrderedDict[int, list[int]] = OrderedDict()

    # ------------------------------------------------------------------ geometry
    @property
    def train_size(self) -> int:
        """Examples per epoch."""
        return len(self.examples["train"])

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over all ranks."""
        return self.micro_batch * self.grad_accum * self.world_size

    @property
    def consumed(self) -> int:
        """Global samples consumed so far (at an optimizer-step boundary)."""
        return self._consumed

    @property
    def epochs_done(self) -> float:
        """Epochs consumed so far (fractional within an epoch)."""
        return self._consumed / self.train_size

    def steps_for_epochs(self, epochs: int) -> int:
        """Optimizer steps that cover ``epochs`` epochs (the last step may reach past them)."""
        return math.ceil(epochs * self.train_size / self.global_batch)

    # ------------------------------------------------------------------ order
    def _order(self, epoch: int) -> list[int]:
        order = self._orders.get(epoch)
        if order is None:
            order = self._orders[epoch] = epoch_permutation(self.seed, epoch, self.train_size)
            while len(self._orders) > _PERMUTATIONS_KEPT:
                self._orders.popitem(last=False)
        return order

    def example_index(self, global_index: int) -> int:
        """Training example at global sample index ``global_index``."""
        epoch, position = divmod(int(global_index), self.train_size)
        return self._order(epoch)[position]

    # ------------------------------------------------------------------ protocol
    def micro_batch_at(self, micro_step: int) -> dict:
        """This rank's batch for ``micro_step`` of the current optimizer step."""
        indices = rank_sample_indices(self._consumed, micro_step, self.micro_batch,
                                      self.world_size, self.rank)
        rows = [self.examples["train"][self.example_index(i)] for i in indices]
        return collate_classify([ids for ids, _ in rows], [y for _, y in rows], self.width,
                                self.pad_id)

    def advance(self) -> None:
        """Commit the optimizer step's samples."""
        self._consumed += self.global_batch

    def consumed_per_source(self) -> list[int]:
        """Consumed samples per source (one source)."""
        return [self._consumed]

    def state_dict(self) -> dict:
        """Position and the identity of the data and order."""
        return {"consumed_samples": self._consumed, "train_size": self.train_size,
                "order_seed": self.seed, "dataset": self.dataset_id}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; refuses other data or another order seed."""
        mine = {"train_size": self.train_size, "order_seed": self.seed,
                "dataset": self.dataset_id}
        changed = [f"{k}: {state.get(k)!r} -> {v!r}" for k, v in mine.items()
                   if k in state and state[k] != v]
        if changed:
            raise ResumeError("the checkpoint trained on other classification data ("
                              + ", ".join(changed) + ")")
        self._consumed = int(state["consumed_samples"])

    def close(self) -> None:
        """Nothing runs in the background."""

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 split: str, batch_size: int, device: torch.device | str = "cpu") -> dict:
        """``{"loss", "accuracy", "num_examples"}`` of ``logits_fn`` over a whole split.

        Collective: every rank must call it (same ``split`` and ``batch_size``).  A logit >= 0
        predicts label 1.
        """
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r} (valid: {', '.join(SPLITS)})")
        rows = self.examples[split]
        batches = [rows[start:start + batch_size] for start in range(0, len(rows), batch_size)]

        def run(chosen):
            # Every forward has batch_size rows (the last batch and a rank's dummy forward are
            # filled with example 0, which is not counted).
            counted = len(chosen or ())
            padded = list(chosen or ()) + [rows[0]] * (batch_size - counted)
            batch = collate_classify([ids for ids, _ in padded], [y for _, y in padded],
                                     self.width, self.pad_id)
            logits = logits_fn(batch["input_ids"].to(device),
                               batch["attention_mask"].to(device)).reshape(-1)[:counted]
            labels = batch["labels"].to(device)[:counted]
            per_sample, _ = classification_loss(logits, labels)
            correct = (logits >= 0).float() == labels
            return (float(per_sample.double().sum()), counted, float(correct.sum()))

        loss_sum = count = correct = 0.0
        for batch_loss, batch_count, batch_correct in run_in_lockstep(
                batches, run, self.rank, self.world_size):
            loss_sum, count, correct = (loss_sum + batch_loss, count + batch_count,
                                        correct + batch_correct)
        total = max(count, 1.0)
        return {"loss": loss_sum / total, "accuracy": correct / total, "num_examples": int(count)}

    def evaluate_all(self, logits_fn, batch_size: int, device="cpu") -> dict:
        """``train_loss``, ``train_acc``, ``test_loss``, ``test_acc`` (test ones skipped when the
        test split is empty); collective."""
        out = {}
        for split in SPLITS:
            if self.examples[split]:
                result = self.evaluate(logits_fn, split, batch_size, device)
                out[f"{split}_loss"], out[f"{split}_acc"] = result["loss"], result["accuracy"]
        return out

