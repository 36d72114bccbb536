"""Resume a checkpoint on another world size (data-parallel degree): re-shard the ZeRO state.

With ``checkpoint.allow_world_size_change=true`` a checkpoint written by ``W`` ranks resumes on
``W'`` ranks.  What a resume keeps, and how:

* **fp32 weights and Adam state** (``exp_avg``, ``exp_avg_sq``, ``step``, every param group's
  hyper-parameters): the saved ZeRO partitions are merged per parameter and partitioned again
  for ``W'`` ranks through DeepSpeed's *universal checkpoint* (below);
* **the data position**: the batch source's position is a global consumed-sample count and
  :func:`megaproc.data.batch.rank_sample_indices` slices each global batch by rank, so the next
  global batch holds exactly the samples an uninterrupted run would -- provided the global
  batch (``micro_batch * grad_accum * world_size``) is unchanged: a world-size change may
  change ``train.grad_accum`` to keep it (``train.total_batch_tokens`` does that by itself) and
  is refused otherwise.  The live graph-search stream (``task.kind: graph_search``) assigns
  examples to per-rank lanes, so its position depends on the world size: refused;
* **RNG**: rank ``r`` of the new run restores saved rank ``r``'s python/numpy/torch RNG when the
  checkpoint has it; a rank that did not exist keeps the stream the trainer seeded from
  ``run.seed`` and its rank (what a fresh run's rank ``r`` starts from); states of saved ranks
  that no longer exist are unused.  Both are logged.  With dropout the loss curve therefore
  continues statistically, not bitwise (each rank draws different masks anyway).

How, on DeepSpeed 0.19.8 (what was tried, and why this path):

* ZeRO's own loader refuses another DP world size: ``DeepSpeedEngine._load_zero_checkpoint``
  raises ``ZeRORuntimeException`` ("Automatic adjustment of ZeRO's optimizer state partitioning
  with a new world size is not currently supported") *before* it reaches the elastic ZeRO-1/2
  merge, so ``zero_optimization.elastic_checkpoint`` does not help; ZeRO-3's
  ``load_state_dict`` raises ``NotImplementedError`` for elastic checkpoints.
* So the checkpoint's ``ds/`` tag is converted with ``deepspeed.checkpoint.ds_to_universal.main``
  into a scratch directory of the *current* run (``checkpoints/.tmp_universal_step_X/``, the
  ``.tmp_`` prefix makes :func:`megaproc.checkpoint.layout.recover` delete it after a crash), and
  loaded with ``"checkpoint": {"load_universal": true}`` in the DeepSpeed config
  (:func:`configure_ds_config`, called by the trainer before the engine is built).  ZeRO-1/2
  checkpoints lack the ``universal_checkpoint_info`` client state that Megatron writes, so the
  conversion injects the default one (``inject_missing_state``).
* Two upstream bugs of ZeRO-3's universal loader
  (``DeepSpeedZeroOptimizer_Stage3.load_hp_checkpoint_state_from_checkpoint_dir_stage3``) are
  repaired by :func:`_repair_zero3_universal_load` (ZeRO-1/2's loader has neither):

  - it copies the hyper-parameters of the *first* saved param group into every group, so the
    no-decay group (biases, norms) would train with weight decay after the resume;
  - it gives every sub-group the *same* ``step`` tensor object; torch's Adam increments each
    group's step in place, and ZeRO-3 steps its sub-groups one by one, so the shared counter
    advances once per sub-group per step and every group but the first gets a wrong bias
    correction from the first step on (the loss drifts ~1e-5 after one step, more later).

  ``tests/core/test_world_size_change.py`` compares the consolidated state right after the
  load with the saved one, and the losses and the final Adam step with uninterrupted runs, for
  ZeRO-2 and ZeRO-3, 2 -> 1 and 1 -> 2 ranks.

Limits: the scratch conversion is written by global rank 0 and read by every rank, so all
ranks must share the run directory's filesystem (as multi-node checkpointing needs anyway);
NVMe-offloaded optimizer state, MoE and pipeline/tensor parallelism are not covered.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import shutil
from pathlib import Path

import torch

import megaproc.checkpoint.layout as layout
from megaproc import distributed as dist_utils
from megaproc.checkpoint.layout import ResumeError
from megaproc.console_log import get_logger
from megaproc.engine import zero_stage

log = get_logger(__name__)

TESTED_DEEPSPEED = "0.19.8"  # the version whose loaders the tests verified
UNIVERSAL_TAG = "universal"
SCRATCH_PREFIX = f"{layout.TMP_PREFIX}universal_"
# Geometry keys a world-size change may change (the global batch they make must stay).
RESHARDABLE = ("world_size", "train.grad_accum")


# ----------------------------------------------------------------------------- resume checks
def saved_world_size(ckpt_dir: str | Path) -> int | None:
    """The world size a checkpoint was written with (None when it does not say)."""
    value = layout.read_trainer_state(ckpt_dir).get("geometry", {}).get("world_size")
    return None if value is None else int(value)


def global_batch(geometry: dict) -> int | None:
    """Samples per optimizer step over all ranks, from a geometry dict."""
    try:
        return (int(geometry["train.micro_batch"]) * int(geometry["train.grad_accum"])
                * int(geometry["world_size"]))
    except (KeyError, TypeError):
        return None


def relaxed_geometry(path: Path, saved: dict, current: dict, settings: dict,
                     critical: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The resume rules when ``checkpoint.allow_world_size_change`` is set.

    Returns ``(keys that must still match, extra refusals)``.  Same world size: only
    ``world_size`` is relaxed (it is equal anyway).  Another world size: ``train.grad_accum``
    may change with it as long as the global batch stays; a graph-search task run is refused
    (raises :class:`ResumeError`).
    """
    old, new = saved.get("world_size"), current.get("world_size")
    if old is None or old == new:
        return [k for k in critical if k != "world_size"], []
    if settings.get("task.kind") == "graph_search":
        raise ResumeError(f"cannot resume {path} (world_size {old}) on world_size {new}: the "
                          "live graph-search stream (task.kind: graph_search) deals examples to "
                          "per-rank lanes, so its position depends on the world size; resume "
                          f"with world_size {old}")
    keep = [k for k in critical if k not in RESHARDABLE]
    old_batch, new_batch = global_batch(saved), global_batch(current)
    extra = []
    if old_batch != new_batch:
        hint = ""
        per_accum = int(current["train.micro_batch"]) * int(new)
        if old_batch is not None and old_batch % per_accum == 0:
            hint = f"; train.grad_accum={old_batch // per_accum} keeps it"
        extra.append(f"global batch (micro_batch * grad_accum * world_size): {old_batch} -> "
                     f"{new_batch} (a world-size change must keep it{hint})")
    return keep, extra


def world_size_change(ckpt_dir: str | Path | None, world_size: int,
                      allow: bool) -> tuple[int, int] | None:
    """``(saved, current)`` world sizes when the resume of ``ckpt_dir`` changes the world size
    (and ``checkpoint.allow_world_size_change`` allows it), else None."""
    if ckpt_dir is None or not allow:
        return None
    saved = saved_world_size(ckpt_dir)
    if saved is None or saved == int(world_size):
        return None
    return saved, int(world_size)


def configure_ds_config(ds_config: dict, resume_from: Path | None, world_size: int,
                        ckpt_cfg) -> bool:
    """Set ``checkpoint.load_universal`` in ``ds_config`` when the resume re-shards.

    DeepSpeed reads the flag from its config (``DeepSpeedConfig.load_universal_checkpoint``);
    0.19.8 consults it only while loading, but it must be there when the engine is built.
    Without ZeRO (stage 0) nothing is partitioned: every rank loads the whole saved state with
    DeepSpeed's usual loader, and the flag would make it skip the weights.  Returns True when
    it was set.
    """
    if world_size_change(resume_from, world_size, ckpt_cfg.allow_world_size_change) is None:
        return False
    if zero_stage(ds_config) == 0:
        return False
    ds_config.setdefault("checkpoint", {})["load_universal"] = True
    return True


# ----------------------------------------------------------------------------- conversion
def convert_to_universal(ds_dir: Path, out_dir: Path) -> Path:
    """Convert a DeepSpeed ZeRO checkpoint tag directory into a universal checkpoint.

    ``out_dir`` becomes the universal tag directory (``mp_rank_*`` / ``zero_pp_rank_*`` model
    states and ``zero/<param>/{fp32,exp_avg,exp_avg_sq[,step]}.pt``); DeepSpeed also writes
    ``latest_universal`` beside it.  Runs in this process (one worker: no child processes
    inside a distributed rank); DeepSpeed's progress output is captured and shown on failure.
    """
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(input_folder=str(ds_dir), output_folder=str(out_dir),
                              num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                              strict=True, inject_missing_state=True)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            ds_to_universal.main(args)
    except Exception as exc:
        tail = "\n".join(captured.getvalue().splitlines()[-20:])
        raise ResumeError(f"converting {ds_dir} to a universal checkpoint failed: "
                          f"{type(exc).__name__}: {exc}\n{tail}") from exc
    return out_dir


# ----------------------------------------------------------------------------- loading
def load_resharded(engine, ckpt_dir: Path, scratch_root: Path, ds_tag: str) -> str | None:
    """Load ``ckpt_dir`` (written by another number of ranks) into ``engine`` (collective).

    Rank 0 converts the ``ds_tag`` directory into ``scratch_root/.tmp_universal_step_X``, every
    rank loads its new partitions from it, the ZeRO-3 param-group fix-up is applied, and the
    scratch copy is deleted.  Returns how the state was re-sharded (for the log line), None
    without ZeRO (nothing is partitioned: DeepSpeed's usual loader reads the whole state).
    """
    import deepspeed

    if not engine.zero_optimization():  # ZeRO-0: the saved state is whole, any world size loads it
        load_path, _ = engine.load_checkpoint(str(ckpt_dir), tag=ds_tag)
        if load_path is None:
            raise ResumeError(f"DeepSpeed could not load the engine state in {ckpt_dir}")
        return None
    if not engine.load_universal_checkpoint():
        raise ResumeError("re-sharding needs checkpoint.load_universal in the DeepSpeed config "
                          "(megaproc.checkpoint.reshard.configure_ds_config)")
    if deepspeed.__version__ != TESTED_DEEPSPEED:
        log.warning(f"re-sharding was verified with DeepSpeed {TESTED_DEEPSPEED}, this is "
                    f"{deepspeed.__version__}: run tests/core/test_world_size_change.py")
    ckpt_dir = Path(ckpt_dir)
    scratch = Path(scratch_root) / f"{SCRATCH_PREFIX}{ckpt_dir.name}"
    error = None
    if dist_utils.is_main():
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            convert_to_universal(ckpt_dir / ds_tag, scratch / UNIVERSAL_TAG)
        except ResumeError as exc:
            error = str(exc)
    error = dist_utils.broadcast_object(error)
    if error is not None:
        raise ResumeError(error)
    if not (scratch / UNIVERSAL_TAG / "zero").is_dir():
        raise ResumeError(f"rank {dist_utils.rank()} cannot see the universal checkpoint rank 0 "
                          f"wrote in {scratch}: re-sharding needs a filesystem all ranks share")
    try:
        load_path, _ = engine.load_checkpoint(str(scratch), tag=UNIVERSAL_TAG)
        if load_path is None:
            raise ResumeError(f"DeepSpeed could not load the universal checkpoint of {ckpt_dir}")
        if engine.zero_optimization_stage() == 3:
            _repair_zero3_universal_load(engine, ckpt_dir / ds_tag)
    finally:
        dist_utils.barrier()  # every rank has read the scratch copy
        if dist_utils.is_main():
            shutil.rmtree(scratch, ignore_errors=True)
    return "a DeepSpeed universal checkpoint: ds_to_universal + load_universal"


def _repair_zero3_universal_load(engine, ds_dir: Path) -> None:
    """Undo the two ZeRO-3 universal-load bugs of DeepSpeed 0.19.8 (see the module docstring).

    ``load_hp_checkpoint_state_from_checkpoint_dir_stage3`` assigns
    ``optim_sd["optimizer_state_dict"]["param_groups"][0]`` to *every* param group: put back
    each group's saved hyper-parameters (in every rank's ``*_optim_states.pt``, identical on
    all ranks).  It also stores one ``step`` tensor object in the state of every sub-group
    (``self.optimizer.state[fp32_param]['step'] = state_step``): give each its own copy.
    """
    base = engine.optimizer.optimizer
    for flat in engine.optimizer.fp32_partitioned_groups_flat:
        state = base.state.get(flat, {})
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()
    files = sorted(ds_dir.glob("*zero_pp_rank_0_*optim_states.pt"))
    if not files:
        raise ResumeError(f"no ZeRO-3 optimizer state in {ds_dir}")
    saved = torch.load(files[0], map_location="cpu", weights_only=False)
    groups = saved["optimizer_state_dict"]["optimizer_state_dict"]["param_groups"]
    live = base.param_groups
    if len(groups) != len(live):
        raise ResumeError(f"the checkpoint has {len(groups)} optimizer param groups, this run "
                          f"{len(live)}")
    for group, saved_group in zip(live, groups):
        for key, value in saved_group.items():
            if key != "params":
                group[key] = value


def rng_plan(ckpt_dir: Path, world_size: int) -> str:
    """Which ranks restore a saved RNG state and which draw from a fresh seed (for the log)."""
    saved = {int(p.stem.split("_")[1]) for p in (Path(ckpt_dir) / "rng").glob("rank_*.pt")}
    restored = [r for r in range(world_size) if r in saved]
    fresh = [r for r in range(world_size) if r not in saved]
    unused = sorted(r for r in saved if r >= world_size)
    parts = []
    if restored:
        parts.append(f"rank(s) {_ranks(restored)} restore the saved RNG of the same rank")
    if fresh:
        parts.append(f"rank(s) {_ranks(fresh)} have none saved and keep the RNG seeded from "
                     "run.seed and the rank")
    if unused:
        parts.append(f"the saved RNG of rank(s) {_ranks(unused)} is unused")
    return "RNG after the world-size change: " + "; ".join(parts)


def _ranks(ranks: list[int]) -> str:
    return ", ".join(str(r) for r in ranks)


def describe(saved_ws: int, world_size: int, zero_stage: int, how: str | None) -> str:
    """The one-line log message of a resume on another world size."""
    ranks = "rank" if world_size == 1 else "ranks"
    detail = f"re-sharded via {how}" if how else "whole states, nothing to re-shard"
    return f"resuming a {saved_ws}-rank checkpoint on {world_size} {ranks} (ZeRO-{zero_stage}, {detail})"


# ----------------------------------------------------------------------------- consolidation
def consolidated_zero_state(ds_dir: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Full (unpartitioned) fp32 weight and Adam state of every parameter in a ZeRO checkpoint.

    Returns ``{param name: {"fp32", "exp_avg", "exp_avg_sq", "step"}}`` for the trainable
    parameters (tied parameters appear under their first name).  Independent of the universal
    conversion -- it walks each group's flat partitions with the saved ``param_shapes``, as
    ``deepspeed.utils.zero_to_fp32`` does for the weights -- so tests use it to compare the
    state before and after a re-sharding resume.  ZeRO-1/2: each param group is one flat
    vector split into equal contiguous parts (plus ``param_alignment_paddings``); ZeRO-3: each
    parameter is split into ``ceil(numel / W)`` elements per rank, padded at its end.
    """
    ds_dir = Path(ds_dir)
    optim_files = sorted(ds_dir.glob("*optim_states.pt"), key=_dp_rank)
    model_files = sorted(ds_dir.glob("*model_states.pt"))
    if not optim_files or not model_files:
        raise ResumeError(f"no ZeRO checkpoint in {ds_dir}")
    shapes = torch.load(model_files[0], map_location="cpu", weights_only=False)["param_shapes"]
    parts = [torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"]
             for f in optim_files]
    stage = int(parts[0]["zero_stage"])
    world = len(parts)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for group, group_shapes in enumerate(shapes):
        if stage <= 2:
            states = [p["base_optimizer_state"]["state"][group] for p in parts]
            flats = {"fp32": [p["single_partition_of_fp32_groups"][group] for p in parts]}
            paddings = (parts[0].get("param_alignment_paddings") or [None] * len(shapes))[group]
        else:
            states = [p["optimizer_state_dict"]["state"][group] for p in parts]
            flats = {"fp32": [p["fp32_flat_groups"][group] for p in parts]}
            paddings = None
        for key in ("exp_avg", "exp_avg_sq"):
            flats[key] = [s[key] for s in states]
        step = states[0]["step"]
        for key, pieces in flats.items():
            if stage <= 2:
                full, offset = torch.cat(pieces), 0
                for i, (name, shape) in enumerate(group_shapes.items()):
                    numel = math.prod(shape)
                    out.setdefault(name, {})[key] = full[offset:offset + numel].view(shape).clone()
                    offset += numel + (paddings[i] if paddings else 0)
            else:
                offset = 0
                for name, shape in group_shapes.items():
                    numel = math.prod(shape)
                    part = math.ceil(numel / world)
                    full = torch.cat([p[offset:offset + part] for p in pieces])[:numel]
                    out.setdefault(name, {})[key] = full.view(shape).clone()
                    offset += part
        for name in group_shapes:
            out[name]["step"] = torch.as_tensor(step, dtype=torch.float32).clone()
    return out


def _dp_rank(path: Path) -> int:
    """The data-parallel rank in a ``[bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt`` name."""
    name = path.name
    marker = "zero_pp_rank_"
    return int(name[name.index(marker) + len(marker):].split("_")[0])
