"""A curriculum-aware, resumable stream of synthetic examples, and split-file readers.

:class:`SyntheticStream` walks the example indices ``next_index, next_index + 1, ...`` of a
generator at the current curriculum ``stage`` and returns the examples that are accepted:
an index is skipped (and counted) when its draw is rejected, when its prompt is reserved
(held-out eval/test/mixin prompts are never produced for training), or when the optional
``accept`` predicate (e.g. a token-length filter) says no.  ``next_index`` is the consumed
index: saving it (``state_dict``) and restoring it resumes the stream exactly.  Because each
example is a pure function of ``(seed, stage, index)``, several data-loader workers or ranks
can generate disjoint index ranges with no shared state.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterator

from megaproc.data.synthetic.graph_search import GraphExample, GraphSearchGenerator

SPLIT_NAMES = ("eval", "test", "mixin")
SKIP_REASONS = ("rejected", "reserved", "filtered")


class SyntheticStream:
    """Deterministic stream of accepted examples from a :class:`GraphSearchGenerator`.

    ``stage`` may be changed at any time (the curriculum advances it); indices keep counting
    across stages.  ``skip_counts`` holds how many indices were skipped for each reason and
    ``skipped`` their total.
    """

    def __init__(self, generator: GraphSearchGenerator, stage: int = 1, start_index: int = 0,
                 reserved: set[str] | frozenset = frozenset(),
                 accept: Callable[[GraphExample], bool] | None = None):
        self.generator = generator
        self.stage = stage
        if int(start_index) < 0:
            raise ValueError(f"start_index must be >= 0 (got {start_index})")
        self.next_index = int(start_index)
        self.reserved = reserved
        self.accept = accept
        self.skip_counts = dict.fromkeys(SKIP_REASONS, 0)

    @property
    def stage(self) -> int:
        """Current curriculum stage (1..generator.num_stages)."""
        return self._stage

    @stage.setter
    def stage(self, value: int) -> None:
        self._stage = self.generator.check_stage(value)

    @property
    def skipped(self) -> int:
        """Indices skipped so far (rejected draws, reserved prompts, not accepted)."""
        return sum(self.skip_counts.values())

    def next(self) -> GraphExample:
        """The next accepted example; advances ``next_index`` past everything it consumed."""
        generator, reserved, accept, counts = self.generator, self.reserved, self.accept, self.skip_counts
        while True:
            example = generator.example(self.next_index, self._stage)
            self.next_index += 1
            if example is None:
                counts["rejected"] += 1
            elif example.prompt in reserved:
                counts["reserved"] += 1
            elif accept is not None and not accept(example):
                counts["filtered"] += 1
            else:
                return example

    __next__ = next

    def __iter__(self) -> Iterator[GraphExample]:
        return self

    def take(self, k: int) -> list[GraphExample]:
        """The next ``k`` accepted examples."""
        return [self.next() for _ in range(int(k))]

    def state_dict(self) -> dict:
        """Position, stage, skip counts and the generator settings (to check on load)."""
        return {"next_index": self.next_index, "stage": self._stage,
                "skip_counts": dict(self.skip_counts), "generator": self.generator.config()}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`; refuses a state saved with other generator settings."""
        saved = state.get("generator")
        if saved is not None:
            current = self.generator.config()
            changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            if changed:
                detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
                raise ValueError(f"synthetic stream state was saved with other generator settings ({detail})")
        self.stage = state["stage"]
        self.next_index = int(state["next_index"])
        self.skip_counts = dict.fromkeys(SKIP_REASONS, 0)
        self.skip_counts.update(state.get("skip_counts", {}))


def load_split(path: str | os.PathLike) -> list[dict]:
    """Read a split ``.jsonl`` file (one example dict per line)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def reserved_prompts(split_dir: str | os.PathLike, splits=SPLIT_NAMES) -> frozenset[str]:
    """Every prompt of the given splits of ``split_dir`` (pass as ``reserved`` to a stream)."""
    prompts: set[str] = set()
    for split in splits:
        path = os.path.join(split_dir, f"{split}.jsonl")
        if os.path.exists(path):
            prompts.update(record["prompt"] for record in load_split(path))
    return frozenset(prompts)
