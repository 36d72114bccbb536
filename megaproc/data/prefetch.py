"""Builds the next few micro-batches of a chained stream on a background thread.

A micro-batch is identified by its key ``(position, stage)`` and building it also yields where
the next one starts, so keys form a chain.  :class:`ChainPrefetcher` walks the chain ahead of
the consumer, keeping at most ``depth`` finished batches.  Asking for a key that is not the
chain's next one (after a stage change, or a resume) discards everything built so far and
restarts the chain there, so a batch is only ever served for the exact key it was built for.
Building several steps ahead lets the thread use whatever time the training loop leaves it
(the training thread holds the GIL for its Python work), which a one-batch lookahead cannot.
"""

from __future__ import annotations

import threading
from typing import Callable


class ChainPrefetcher:
    """Background builder of consecutive keys ``k0, next(k0), ...``.

    ``build(key)`` returns ``(result, next_key)``; :meth:`get` returns ``result`` for ``key``.
    """

    def __init__(self, build: Callable, depth: int = 4):
        self._build = build
        self.depth = max(1, int(depth))
        self._cond = threading.Condition()
        self._ready: dict = {}            # key -> (ok, result or exception)
        self._next_key = None             # the key the thread builds next (None: idle)
        self._generation = 0              # bumped on every restart; stale builds are dropped
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="task-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (self._next_key is None or len(self._ready) >= self.depth):
                    self._cond.wait()
                if self._closed:
                    return
                key, generation = self._next_key, self._generation
            try:
                result, next_key = self._build(key)
                outcome = (True, result)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                outcome, next_key = (False, exc), None
            with self._cond:
                if generation == self._generation:
                    self._ready[key] = outcome
                    self._next_key = next_key
                self._cond.notify_all()

    def get(self, key):
        """The result for ``key`` (built by the thread, or after restarting the chain at it)."""
        with self._cond:
            if key not in self._ready and key != self._next_key:
                self._ready.clear()
                self._generation += 1
                self._next_key = key
                self._cond.notify_all()
            while key not in self._ready:
                self._cond.wait()
            ok, result = self._ready.pop(key)
            self._cond.notify_all()
        if not ok:
            raise result
        return result

    def close(self) -> None:
        """Stop the thread (a build in progress finishes first)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
