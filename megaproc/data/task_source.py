"""Batch source that streams live graph-search examples at the current curriculum stage.

Global order
    Example ``k`` at stage ``s`` is a pure function of ``(task.seed, s, k)``.  With ``W``
    ranks, rank ``r`` owns the generator indices ``r, r + W, r + 2W, ...`` (its *lane*) and
    takes the next ``micro_batch`` accepted examples of its lane for every micro-step, so each
    rank generates and tokenizes only its own examples (the work per rank does not grow with
    the number of ranks).  The examples trained on are thus fixed by the seed, the world size
    and the stage history, never by timing; with one rank the lane is the plain stream
    ``0, 1, 2, ...``.  Indices are skipped (and counted) when a draw is rejected by the
    generator, when the prompt is one of the reserved eval/test/mixin prompts, or when the
    tokenized example is longer than ``train.seq_len + 1`` tokens ("too_long": dropped before
    training with a warning; the count is printed again when training ends and is saved in
    every checkpoint).

Resume
    The state is every rank's lane position (the generator's consumed index: rank ``r`` has
    consumed all indices below ``position_r * W + r`` of its lane), the stage, the skip counts
    and the consumed-sample count, taken at an optimizer-step boundary (the ranks' states are
    all-gathered when a checkpoint is written, which every rank takes part in).  Restoring it
    continues every lane exactly; the world size must not change (the trainer refuses that).

Prefetch
    While the model computes, a background thread builds the next ``PREFETCH_DEPTH``
    micro-batches, each for its key ``(lane position, stage)``
    (:class:`~megaproc.data.prefetch.ChainPrefetcher`).  A prefetched batch is used only if its
    key is the current one, so a stage change (the curriculum advances between steps) never
    serves examples of the old stage; the thread has its own tokenizer copy.
"""

from __future__ import annotations

import json
import os
import warnings

from megaproc import distributed as dist_utils
from megaproc.data.prefetch import ChainPrefetcher
from megaproc.data.prompt_answer import PromptAnswerEncoder, collate_prompt_answer
from megaproc.errors import ResumeError
from megaproc.synthetic import GraphSearchGenerator, ReservedPrompts

SOURCE_NAME = "graph_search"
SKIP_REASONS = ("rejected", "reserved", "too_long")
PREFETCH_DEPTH = 4  # micro-batches built ahead


class TaskBatchSource:
    """Micro-batches of live task examples for one rank (the trainer's batch-source interface)."""

    def __init__(self, generator: GraphSearchGenerator, encoder: PromptAnswerEncoder, micro_batch: int,
                 grad_accum: int, world_size: int, rank: int, pad_id: int, seq_len: int,
                 stage: int = 1, reserved=frozenset(), prefetch: bool = True, log=None):
        self.generator = generator
        self.encoder = encoder
        self.micro_batch, self.grad_accum = int(micro_batch), int(grad_accum)
        self.world_size, self.rank = int(world_size), int(rank)
        self.pad_id, self.seq_len = int(pad_id), int(seq_len)
        self.reserved = reserved
        self._reserved_fp = None
        self.log = log or (lambda message: None)
        self.names = [SOURCE_NAME]
        self.stage = stage
        self.position = 0                        # committed lane position (next step's start)
        self.consumed = 0                        # accepted examples consumed by all ranks
        self.skip_counts = dict.fromkeys(SKIP_REASONS, 0)   # this rank's lane
        self._all_skip_counts = None             # every rank's counts, at the last save/load
        self._cursor = 0                         # lane position inside the current step
        self._warned_too_long = False
        self._prefetcher = ChainPrefetcher(self._build, PREFETCH_DEPTH) if prefetch else None

    # ------------------------------------------------------------------ stage
    @property
    def stage(self) -> int:
        """The curriculum stage examples are drawn at."""
        return self._stage

    @stage.setter
    def stage(self, value: int) -> None:
        self._stage = self.generator.check_stage(value)

    def set_stage(self, stage: int) -> None:
        """Draw later examples at ``stage`` (prefetched batches of another stage are discarded)."""
        self.stage = stage

    @property
    def global_batch(self) -> int:
        """Accepted examples per optimizer step over all ranks."""
        return self.micro_batch * self.grad_accum * self.world_size

    @property
    def dropped_too_long(self) -> int:
        """Examples this rank dropped so far because they are longer than ``seq_len + 1`` tokens."""
        return self.skip_counts["too_long"]

    def lane_index(self, position: int) -> int:
        """Generator index of lane position ``position`` of this rank."""
        return position * self.world_size + self.rank

    # ------------------------------------------------------------------ building
    def lane_examples(self, position: int, stage: int, count: int):
        """``(rows, examples, end_position, skip_counts)``: the next ``count`` accepted examples
        of this rank's lane from ``position`` at ``stage``; ``rows[k]`` holds one sample per
        valid answer of example ``k`` (``output_texts[0]`` first).  An example any of whose
        rows is longer than ``seq_len + 1`` tokens is dropped ("too_long")."""
        limit = self.seq_len + 1
        counts = dict.fromkeys(SKIP_REASONS, 0)
        samples, examples, first_too_long = [], [], None
        while len(samples) < count:
            candidates = []
            while len(candidates) < count - len(samples):
                example = self.generator.example(self.lane_index(position), stage)
                position += 1
                if example is None:
                    counts["rejected"] += 1
                elif example.prompt in self.reserved:
                    counts["reserved"] += 1
                else:
                    candidates.append(example)
            pairs = [(e.prompt, a) for e in candidates for a in e.output_texts]
            encoded = iter(self.encoder.encode_pairs(pairs))
            for example in candidates:
                rows = [next(encoded) for _ in example.output_texts]
                longest = max(len(row["tokens"]) for row in rows)
                if longest > limit:
                    counts["too_long"] += 1
                    first_too_long = first_too_long or longest
                    continue
                samples.append(rows)
                examples.append(example)
        if first_too_long and not self._warned_too_long:
            self._warned_too_long = True
            self.log(f"warning: dropping task examples longer than train.seq_len + 1 = "
                     f"{limit} tokens (first one: {first_too_long} tokens at stage {stage}); "
                     "they are counted and reported at the end of training")
        return samples, examples, position, counts

    def _build(self, key: tuple[int, int]):
        """``((batch, end_position, skip_counts), next_key)`` for the micro-batch at ``key``."""
        position, stage = key
        examples, _, end, counts = self.lane_examples(position, stage, self.micro_batch)
        return (collate_prompt_answer(answer_rows(examples), self.pad_id), end, counts), (end, stage)

    # ------------------------------------------------------------------ interface
    def micro_batch_at(self, micro_step: int) -> dict:
        """This rank's batch for ``micro_step`` of the current optimizer step."""
        if micro_step == 0:
            self._cursor = self.position
        key = (self._cursor, self.stage)
        if self._prefetcher is not None:
            batch, end, counts = self._prefetcher.get(key)
        else:
            (batch, end, counts), _ = self._build(key)
        self._cursor = end
        for reason, count in counts.items():
            self.skip_counts[reason] += count
        return batch

    def advance(self) -> None:
        """Commit the optimizer step's examples."""
        self.position = self._cursor
        self.consumed += self.global_batch

    def consumed_per_source(self) -> list[int]:
        """Consumed samples per source (one source: the task stream)."""
        return [self.consumed]

    def state_dict(self) -> dict:
        """Lane positions and skip counts of every rank (collective), stage, consumed samples."""
        gathered = dist_utils.all_gather_objects((self.position, dict(self.skip_counts)))
        self._all_skip_counts = [counts for _, counts in gathered]
        totals = self.total_skip_counts()
        return {"world_size": self.world_size, "positions": [pos for pos, _ in gathered],
                "stage": self.stage, "consumed_samples": self.consumed,
                "skip_counts": totals, "rank_skip_counts": self._all_skip_counts,
                "dropped_too_long": totals["too_long"],
                "generator": self.generator.config(), "reserved": self._reserved_fingerprint()}

    def _reserved_fingerprint(self) -> str:
        if self._reserved_fp is None:
            reserved = self.reserved if isinstance(self.reserved, ReservedPrompts) else \
                ReservedPrompts({ReservedPrompts.digest(p) for p in self.reserved})
            self._reserved_fp = reserved.fingerprint()
        return self._reserved_fp

    def total_skip_counts(self) -> dict:
        """Skip counts summed over ranks (as of the last save or load; this rank's otherwise)."""
        per_rank = self._all_skip_counts or [self.skip_counts]
        return {reason: sum(int(c.get(reason, 0)) for c in per_rank) for reason in SKIP_REASONS}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; refuses other generator settings, reserved prompts or
        world size."""
        saved, current = state.get("generator") or {}, self.generator.config()
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if saved and changed:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
            raise ResumeError(f"the checkpoint's task stream used other generator settings ({detail})")
        if state.get("reserved") and state["reserved"] != self._reserved_fingerprint():
            raise ResumeError("the checkpoint's task stream excluded other reserved prompts "
                              "(task.splits_dir or its files changed)")
        if int(state["world_size"]) != self.world_size:
            raise ResumeError(f"the checkpoint's task stream was split over {state['world_size']} "
                              f"ranks, this run has {self.world_size}")
        self.stage = int(state["stage"])
        self.position = self._cursor = int(state["positions"][self.rank])
        self.consumed = int(state["consumed_samples"])
        self._all_skip_counts = [dict(c) for c in state["rank_skip_counts"]]
        self.skip_counts = dict.fromkeys(SKIP_REASONS, 0)
        self.skip_counts.update({k: int(v) for k, v in self._all_skip_counts[self.rank].items()})

    def close(self) -> None:
        """Report the skip counts of all ranks (collective: every rank closes its source when
        training ends) and stop the prefetch thread."""
        self._all_skip_counts = dist_utils.all_gather_objects(dict(self.skip_counts))
        totals = self.total_skip_counts()
        if totals["too_long"]:
            self.log(f"warning: {totals['too_long']} task examples longer than "
                     f"train.seq_len + 1 = {self.seq_len + 1} tokens were dropped (all ranks, "
                     "since the start of the run)")
        skipped = ", ".join(f"{k} {v}" for k, v in totals.items())
        self.log(f"task stream: {self.consumed} examples trained on at stage "
                 f"{self.stage}; generator indices skipped: {skipped}")
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None


def answer_rows(examples: list[list[dict]]) -> list[dict]:
    """The rows of a micro-batch: every example's ``output_texts[0]`` row in order, then the
    rows of its other valid answers, each tagged with ``example_id`` and ``primary``."""
    primary = [dict(rows[0], example_id=k, primary=True) for k, rows in enumerate(examples)]
    others = [dict(row, example_id=k, primary=False)
              for k, rows in enumerate(examples) for row in rows[1:]]
    return primary + others


def check_split_settings(split_dir: str, generator: GraphSearchGenerator, log) -> None:
    """Warn when ``split_dir/meta.json`` was built with other generator settings."""
    meta_path = os.path.join(split_dir, "meta.json")
    if not os.path.isfile(meta_path):
        return
    with open(meta_path, encoding="utf-8") as handle:
        saved = json.load(handle).get("generator", {})
    current = generator.config()
    keys = ("generator_version", "max_input_size", "max_lookahead", "seed", "natural_language")
    changed = [k for k in keys if k in saved and saved[k] != current[k]]
    if changed:
        detail = ", ".join(f"{k}={saved[k]!r} (run: {current[k]!r})" for k in changed)
        log(f"warning: task.splits_dir {split_dir} was built with {detail}")


def build_task_source(task_cfg, train_cfg, start_stage: int, tokenizer, rank: int,
                      world_size: int, pad_id: int, log) -> TaskBatchSource:
    """The batch source of a run with ``task.kind: graph_search`` (``log`` takes one message)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generator = GraphSearchGenerator(task_cfg.max_input_size, task_cfg.max_lookahead,
                                         task_cfg.seed, natural_language=task_cfg.natural_language)
    for warning in caught:
        log(f"warning: {warning.message}")
    reserved = ReservedPrompts()
    if task_cfg.splits_dir:
        if not os.path.isdir(task_cfg.splits_dir):
            raise FileNotFoundError(f"task.splits_dir: directory not found: {task_cfg.splits_dir}")
        check_split_settings(task_cfg.splits_dir, generator, log)
        reserved = ReservedPrompts.from_split_dir(task_cfg.splits_dir)
        log(f"task: {len(reserved)} reserved eval/test/mixin prompts are excluded from training")
    t = train_cfg
    return TaskBatchSource(generator, PromptAnswerEncoder(tokenizer), t.micro_batch, t.grad_accum,
                           world_size, rank, pad_id, t.seq_len, stage=start_stage,
                           reserved=reserved, prefetch=task_cfg.prefetch, log=log)
