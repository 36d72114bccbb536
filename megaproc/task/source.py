"""Batch source that streams live graph-search examples at the current curriculum stage.

Global order
    All ranks walk the same deterministic :class:`~megaproc.data.synthetic.SyntheticStream`
    (example ``k`` at stage ``s`` is a pure function of ``(task.seed, s, k)``).  Each
    micro-step takes the next ``micro_batch * world_size`` *accepted* examples of the stream;
    rank ``r`` keeps the ``r``-th slice of ``micro_batch``.  The micro-steps of an optimizer
    step follow each other in the stream, so the examples trained on depend only on the stage
    history, never on timing.  Indices are skipped (and counted) when a draw is rejected by
    the generator, when the prompt is one of the reserved eval/test/mixin prompts, or when
    the tokenized example is longer than ``train.seq_len + 1`` tokens ("too_long": dropped
    before training with a warning; the count is printed again when training ends and is
    saved in every checkpoint).

Resume
    The state is the stream position ``next_index`` (the generator's consumed index), the
    stage, the skip counts and the consumed-sample count, all taken at an optimizer-step
    boundary; restoring it continues the stream exactly.

Prefetch
    While the model computes, a background thread builds the next micro-batch for the key
    ``(stream position, stage)``.  A prefetched batch is used only if its key is still the
    current one, so a stage change (the curriculum advances between steps) never serves
    examples of the old stage; the thread has its own tokenizer copy.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor

from megaproc import distributed as dist_utils
from megaproc.checkpoint import ResumeError
from megaproc.data.synthetic import GraphSearchGenerator, SyntheticStream
from megaproc.task.encoding import TaskEncoder, collate_task

SOURCE_NAME = "graph_search"
SKIP_REASONS = ("rejected", "reserved", "too_long")


class ReservedPrompts:
    """Membership test for the prompts of a split directory, kept as 16-byte digests.

    The prompts of a full-size split (57,000 examples of a few KB each) would take hundreds of
    MB per rank as strings; their BLAKE2b digests take a few MB.
    """

    def __init__(self, digests: set[bytes] | None = None):
        self.digests = digests or set()

    @staticmethod
    def digest(prompt: str) -> bytes:
        """The digest a prompt is stored under."""
        return hashlib.blake2b(prompt.encode("utf-8"), digest_size=16).digest()

    @classmethod
    def from_split_dir(cls, split_dir: str, splits=("eval", "test", "mixin")) -> "ReservedPrompts":
        """Digests of every prompt in ``split_dir/{eval,test,mixin}.jsonl`` (missing files skipped)."""
        digests = set()
        for split in splits:
            path = os.path.join(split_dir, f"{split}.jsonl")
            if not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        digests.add(cls.digest(json.loads(line)["prompt"]))
        return cls(digests)

    def __contains__(self, prompt: str) -> bool:
        return self.digest(prompt) in self.digests

    def __len__(self) -> int:
        return len(self.digests)

    def fingerprint(self) -> str:
        """Hash of the reserved set (a resume refuses a changed set: the stream would differ)."""
        return hashlib.sha256(b"".join(sorted(self.digests))).hexdigest()[:16]


class TaskBatchSource:
    """Micro-batches of live task examples for one rank (the trainer's batch-source interface)."""

    def __init__(self, generator: GraphSearchGenerator, encoder: TaskEncoder, micro_batch: int,
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
        self.stage = stage
        self.next_index = 0                      # committed: first index of the next step
        self.consumed = 0                        # accepted examples consumed by all ranks
        self.skip_counts = dict.fromkeys(SKIP_REASONS, 0)
        self._cursor = 0                         # position inside the current step
        self._warned_too_long = False
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="task-prefetch") \
            if prefetch else None
        self._pending: dict[tuple[int, int], Future] = {}

    # ------------------------------------------------------------------ stage
    @property
    def stage(self) -> int:
        """The curriculum stage examples are drawn at."""
        return self._stage

    @stage.setter
    def stage(self, value: int) -> None:
        value = int(value)
        if not 1 <= value <= self.generator.num_stages:
            raise ValueError(f"stage must be in 1..{self.generator.num_stages} (got {value})")
        self._stage = value

    def set_stage(self, stage: int) -> None:
        """Draw later examples at ``stage`` (prefetched batches of another stage are discarded)."""
        self.stage = stage

    @property
    def global_micro_batch(self) -> int:
        """Accepted examples per micro-step over all ranks."""
        return self.micro_batch * self.world_size

    @property
    def global_batch(self) -> int:
        """Accepted examples per optimizer step over all ranks."""
        return self.global_micro_batch * self.grad_accum

    @property
    def dropped_too_long(self) -> int:
        """Examples dropped so far because they are longer than ``seq_len + 1`` tokens."""
        return self.skip_counts["too_long"]

    # ------------------------------------------------------------------ building
    def global_examples(self, start_index: int, stage: int):
        """``(samples, examples, end_index, skip_counts)`` of the global micro-batch at ``start_index``."""
        stream = SyntheticStream(self.generator, stage, start_index, self.reserved)
        limit = self.seq_len + 1
        samples, examples, too_long, first_too_long = [], [], 0, None
        while len(samples) < self.global_micro_batch:
            candidates = stream.take(self.global_micro_batch - len(samples))
            encoded = self.encoder.encode_pairs([(e.prompt, e.output_texts[0]) for e in candidates])
            for example, sample in zip(candidates, encoded):
                if len(sample["tokens"]) > limit:
                    too_long += 1
                    first_too_long = first_too_long or len(sample["tokens"])
                    continue
                samples.append(sample)
                examples.append(example)
        counts = {"rejected": stream.skip_counts["rejected"],
                  "reserved": stream.skip_counts["reserved"], "too_long": too_long}
        if first_too_long and not self._warned_too_long:
            self._warned_too_long = True
            self.log(f"[megaproc] warning: dropping task examples longer than train.seq_len + 1 = "
                     f"{limit} tokens (first one: {first_too_long} tokens at stage {stage}); "
                     "they are counted and reported at the end of training")
        return samples, examples, stream.next_index, counts

    def _build(self, start_index: int, stage: int):
        samples, _, end_index, counts = self.global_examples(start_index, stage)
        mine = samples[self.rank * self.micro_batch:(self.rank + 1) * self.micro_batch]
        return collate_task(mine, self.pad_id), end_index, counts

    def _submit(self, key: tuple[int, int]) -> Future:
        future = self._pending.pop(key, None)
        if future is None:
            if self._pool is None:
                future = Future()
                future.set_result(self._build(*key))
            else:
                future = self._pool.submit(self._build, *key)
        return future

    # ------------------------------------------------------------------ interface
    def micro_batch_at(self, micro_step: int) -> dict:
        """This rank's batch for ``micro_step`` of the current optimizer step."""
        if micro_step == 0:
            self._cursor = self.next_index
        key = (self._cursor, self.stage)
        future = self._submit(key)
        for stale in [k for k in self._pending if k != key]:
            self._pending.pop(stale).cancel()
        batch, end_index, counts = future.result()
        self._cursor = end_index
        for reason, count in counts.items():
            self.skip_counts[reason] += count
        if self._pool is not None:
            nxt = (end_index, self.stage)
            self._pending[nxt] = self._pool.submit(self._build, *nxt)
        return batch

    def advance(self) -> None:
        """Commit the optimizer step's examples."""
        self.next_index = self._cursor
        self.consumed += self.global_batch

    def consumed_per_source(self) -> list[int]:
        """Consumed samples per source (one source: the task stream)."""
        return [self.consumed]

    def state_dict(self) -> dict:
        """Stream position (generator index), stage, skip counts and consumed samples."""
        return {"next_index": self.next_index, "stage": self.stage, "consumed_samples": self.consumed,
                "skip_counts": dict(self.skip_counts), "dropped_too_long": self.dropped_too_long,
                "generator": self.generator.config(), "reserved": self._reserved_fingerprint()}

    def _reserved_fingerprint(self) -> str:
        if self._reserved_fp is None:
            reserved = self.reserved if isinstance(self.reserved, ReservedPrompts) else \
                ReservedPrompts({ReservedPrompts.digest(p) for p in self.reserved})
            self._reserved_fp = reserved.fingerprint()
        return self._reserved_fp

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; refuses a state saved with other generator settings."""
        saved, current = state.get("generator") or {}, self.generator.config()
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if saved and changed:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
            raise ResumeError(f"the checkpoint's task stream used other generator settings ({detail})")
        if state.get("reserved") and state["reserved"] != self._reserved_fingerprint():
            raise ResumeError("the checkpoint's task stream excluded other reserved prompts "
                              "(task.splits_dir or its files changed)")
        self.stage = int(state["stage"])
        self.next_index = self._cursor = int(state["next_index"])
        self.consumed = int(state["consumed_samples"])
        self.skip_counts = dict.fromkeys(SKIP_REASONS, 0)
        self.skip_counts.update({k: int(v) for k, v in state.get("skip_counts", {}).items()})
        self._pending.clear()

    def summary(self) -> str:
        """One line: consumed examples and skipped indices by reason."""
        skipped = ", ".join(f"{k} {v}" for k, v in self.skip_counts.items())
        return (f"task stream: {self.consumed} examples trained on, generator index "
                f"{self.next_index}, stage {self.stage}; skipped: {skipped}")

    def close(self) -> None:
        """Report the too-long count (rank 0) and stop the prefetch thread."""
        if self.dropped_too_long:
            self.log(f"[megaproc] warning: {self.dropped_too_long} task examples longer than "
                     f"train.seq_len + 1 = {self.seq_len + 1} tokens were dropped during this run")
        self.log(f"[megaproc] {self.summary()}")
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def check_split_settings(split_dir: str, generator: GraphSearchGenerator, log) -> None:
    """Warn when ``split_dir/meta.json`` was built with other generator settings."""
    meta_path = os.path.join(split_dir, "meta.json")
    if not os.path.isfile(meta_path):
        return
    with open(meta_path, encoding="utf-8") as handle:
        saved = json.load(handle).get("generator", {})
    current = generator.config()
    keys = ("max_input_size", "max_lookahead", "seed", "natural_language")
    changed = [k for k in keys if k in saved and saved[k] != current[k]]
    if changed:
        detail = ", ".join(f"{k}={saved[k]!r} (run: {current[k]!r})" for k in changed)
        log(f"[megaproc] warning: task.splits_dir {split_dir} was built with {detail}")


def build_task_source(trainer) -> TaskBatchSource:
    """The task batch source of a run with ``task.kind: graph_search``."""
    import warnings

    from megaproc.workflows import curriculum_config, task_config

    cfg, task = trainer.cfg, task_config(trainer.cfg)
    log = (lambda message: print(message, flush=True)) if dist_utils.is_main() else (lambda m: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generator = GraphSearchGenerator(task.max_input_size, task.max_lookahead, task.seed,
                                         natural_language=task.natural_language)
    for warning in caught:
        log(f"[megaproc] warning: {warning.message}")
    reserved = ReservedPrompts()
    if task.splits_dir:
        if not os.path.isdir(task.splits_dir):
            raise FileNotFoundError(f"task.splits_dir: directory not found: {task.splits_dir}")
        check_split_settings(task.splits_dir, generator, log)
        reserved = ReservedPrompts.from_split_dir(task.splits_dir)
        log(f"[megaproc] task: {len(reserved)} reserved eval/test/mixin prompts are excluded "
            "from training")
    t = cfg.train
    return TaskBatchSource(generator, TaskEncoder(trainer.tokenizer), t.micro_batch, t.grad_accum,
                           trainer.world_size, trainer.rank, trainer.pad_id, t.seq_len,
                           stage=curriculum_config(cfg).start_stage, reserved=reserved,
                           prefetch=task.prefetch, log=log)
