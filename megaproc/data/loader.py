"""Feeds each rank its micro-batches of a map-style dataset in the fixed global order.

The loader's whole state is the global consumed-sample count, so a resume never replays or
skips data.  The next micro-batch is prepared on a background thread while the model computes.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from megaproc.data.batch import collate, rank_sample_indices


class IndexedBatchSource:
    """Micro-batches of ``dataset`` for one rank; ``advance()`` after each optimizer step."""

    def __init__(self, dataset, micro_batch: int, grad_accum: int, world_size: int, rank: int,
                 pad_id: int, seq_len: int, prefetch: bool = True):
        self.dataset = dataset
        self.micro_batch, self.grad_accum = micro_batch, grad_accum
        self.world_size, self.rank = world_size, rank
        self.pad_id, self.seq_len = pad_id, seq_len
        self.consumed = 0
        self._pool = ThreadPoolExecutor(max_workers=1) if prefetch else None
        self._pending: dict[tuple[int, int], Future] = {}

    @property
    def global_batch(self) -> int:
        """Samples consumed by one optimizer step over all ranks."""
        return self.micro_batch * self.grad_accum * self.world_size

    def _build(self, consumed: int, micro_step: int) -> dict:
        indices = rank_sample_indices(consumed, micro_step, self.micro_batch, self.world_size,
                                      self.rank)
        samples = [self.dataset[int(i)] for i in indices]
        return collate(samples, self.pad_id, pad_to=self.seq_len + 1)

    def _next_key(self, consumed: int, micro_step: int) -> tuple[int, int]:
        if micro_step + 1 < self.grad_accum:
            return consumed, micro_step + 1
        return consumed + self.global_batch, 0

    def micro_batch_at(self, micro_step: int) -> dict:
        """This rank's batch for ``micro_step`` of the current step; prefetches the next one."""
        key = (self.consumed, micro_step)
        future = self._pending.pop(key, None)
        batch = future.result() if future is not None else self._build(*key)
        if self._pool is not None:
            self._pending.clear()
            nxt = self._next_key(*key)
            self._pending[nxt] = self._pool.submit(self._build, *nxt)
        return batch

    def advance(self) -> None:
        """Mark one optimizer step's samples as consumed."""
        self.consumed += self.global_batch

    def state_dict(self) -> dict:
        """Loader position."""
        return {"consumed_samples": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        """Restore the loader position."""
        self.consumed = int(state["consumed_samples"])
        self._pending.clear()

    def close(self) -> None:
        """Stop the prefetch thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
