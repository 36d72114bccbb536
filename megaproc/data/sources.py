"""Batch sources: what the train loop pulls micro-batches from.

:class:`BatchSource` is the protocol every source implements (the indexed-data source below,
the live graph-search stream :class:`~megaproc.data.task_source.TaskBatchSource`, the boolean
classification source).  The loop calls ``micro_batch_at(a)`` for each micro-step ``a`` of an
optimizer step and ``advance()`` after the step; the position is a global consumed-sample count
(per source for blends), saved in checkpoints through ``state_dict``, so a resume never replays
or skips data.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, runtime_checkable

from megaproc.data.batch import collate, rank_sample_indices


@runtime_checkable
class BatchSource(Protocol):
    """Micro-batches of one rank in a fixed global order."""

    names: list[str]  # one name per data source (per-source losses are logged under them)

    @property
    def consumed(self) -> int:
        """Global samples consumed by all ranks so far (at an optimizer-step boundary)."""

    def micro_batch_at(self, micro_step: int) -> dict:
        """This rank's collated batch for ``micro_step`` of the current optimizer step."""

    def advance(self) -> None:
        """Mark the current optimizer step's samples as consumed."""

    def consumed_per_source(self) -> list[int]:
        """Global samples consumed from each source, in the order of ``names``."""

    def state_dict(self) -> dict:
        """JSON-serialisable position."""

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""

    def close(self) -> None:
        """Stop background work."""


class IndexedBatchSource:
    """Micro-batches of a :class:`~megaproc.data.blended.BlendedDataset` for one rank; the next
    one is built on a background thread while the model computes."""

    def __init__(self, dataset, micro_batch: int, grad_accum: int, world_size: int, rank: int,
                 pad_id: int, seq_len: int, prefetch: bool = True, documents=None):
        self.dataset = dataset
        self.names = list(dataset.source_names)
        self.micro_batch, self.grad_accum = micro_batch, grad_accum
        self.world_size, self.rank = world_size, rank
        self.pad_id, self.seq_len = pad_id, seq_len
        self.documents = documents  # document masking of the packed samples (or None)
        self._consumed = 0
        self._pool = ThreadPoolExecutor(max_workers=1) if prefetch else None
        self._pending: dict[tuple[int, int], Future] = {}

    @property
    def consumed(self) -> int:
        """Global samples consumed so far."""
        return self._consumed

    @property
    def global_batch(self) -> int:
        """Samples consumed by one optimizer step over all ranks."""
        return self.micro_batch * self.grad_accum * self.world_size

    def _build(self, consumed: int, micro_step: int) -> dict:
        indices = rank_sample_indices(consumed, micro_step, self.micro_batch, self.world_size,
                                      self.rank)
        samples = [self.dataset[int(i)] for i in indices]
        return collate(samples, self.pad_id, pad_to=self.seq_len + 1, documents=self.documents)

    def _next_key(self, consumed: int, micro_step: int) -> tuple[int, int]:
        if micro_step + 1 < self.grad_accum:
            return consumed, micro_step + 1
        return consumed + self.global_batch, 0

    def micro_batch_at(self, micro_step: int) -> dict:
        """This rank's batch for ``micro_step`` of the current step; prefetches the next one."""
        key = (self._consumed, micro_step)
        future = self._pending.pop(key, None)
        batch = future.result() if future is not None else self._build(*key)
        if self._pool is not None:
            self._pending.clear()
            nxt = self._next_key(*key)
            self._pending[nxt] = self._pool.submit(self._build, *nxt)
        return batch

    def advance(self) -> None:
        """Mark one optimizer step's samples as consumed."""
        self._consumed += self.global_batch

    def consumed_per_source(self) -> list[int]:
        """Samples each source of the blend contributed so far."""
        return list(self.dataset.source_counts(self._consumed))

    def state_dict(self) -> dict:
        """Loader position."""
        return {"consumed_samples": self._consumed}

    def load_state_dict(self, state: dict) -> None:
        """Restore the loader position."""
        self._consumed = int(state["consumed_samples"])
        self._pending.clear()

    def close(self) -> None:
        """Stop the prefetch thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
