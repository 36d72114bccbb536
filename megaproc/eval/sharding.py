"""Evaluation work over ranks, every rank at the same number of forwards: the one helper.

Every evaluator (command line and training hooks alike) follows one rule:

* the work is cut into batches from the *whole* item list, identically on every rank, so a
  batch holds the same rows whatever the number of ranks;
* rank ``r`` of ``W`` runs batches ``r, r + W, r + 2W, ...`` and then ``None`` "padding" calls
  until it has made ``ceil(N / W)`` calls.  With a ZeRO-3 engine a forward is collective (every
  layer's parameters are all-gathered from all ranks), so a rank that stopped early would leave
  the others waiting forever; the padding call runs a one-token dummy forward;
* each batch's result is gathered and every rank gets all results in batch order.

Because batches never depend on the world size and results are combined in batch order, ``W``
ranks give bit for bit the numbers of one rank (same kernels and thread count assumed).
Decoding loops, whose number of forwards depends on the outputs, add :func:`any_rank`: every
rank keeps stepping (dummy forwards when it is done) while any rank still decodes.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, TypeVar

import torch
import torch.distributed as dist
from tqdm import tqdm

from megaproc import distributed as dist_utils

Batch = TypeVar("Batch")
Result = TypeVar("Result")


def _collective_device() -> torch.device:
    """Where a tensor for a collective must live: the rank's GPU under NCCL, else the CPU."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def forwards_per_rank(num_batches: int, world_size: int) -> int:
    """Calls every rank makes for ``num_batches`` batches: ``ceil(num_batches / world_size)``."""
    return math.ceil(num_batches / max(1, int(world_size)))


def run_in_lockstep(batches: Sequence[Batch], run_batch: Callable[[Batch | None], Result],
                    rank: int = 0, world_size: int = 1, progress: bool = False,
                    desc: str = "eval") -> list[Result]:
    """Results of ``run_batch`` on every batch, in batch order, on every rank.

    This rank calls ``run_batch(batches[b])`` for its batches ``b = rank, rank + world_size,
    ...`` and ``run_batch(None)`` (a dummy forward, result dropped) until it has made
    :func:`forwards_per_rank` calls; with ``world_size > 1`` the results are all-gathered
    (collective: every rank must call this with the same batch count).  Results must be
    picklable.  ``progress`` shows a tqdm bar of this rank's batches on rank 0 (stderr).
    """
    world_size = max(1, int(world_size))
    calls = forwards_per_rank(len(batches), world_size)
    bar = tqdm(total=calls, desc=desc, unit="batch", mininterval=1.0, leave=False) \
        if progress and rank == 0 and calls else None
    mine: list[Result] = []
    try:
        for k in range(calls):
            index = rank + k * world_size
            if index < len(batches):
                mine.append(run_batch(batches[index]))
            else:
                run_batch(None)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if world_size == 1:
        return mine
    shares = dist_utils.all_gather_objects(mine)
    results: list = [None] * len(batches)
    for share_rank, share in enumerate(shares):
        for k, result in enumerate(share):
            results[share_rank + k * world_size] = result
    return results


def any_rank(flag: bool, world_size: int = 1) -> bool:
    """True when ``flag`` is true on at least one rank (collective when ``world_size > 1``)."""
    if world_size <= 1:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def min_over_ranks(value: int, world_size: int = 1) -> int:
    """The smallest ``value`` of all ranks (collective when ``world_size > 1``), e.g. the
    batch size that fits on every device."""
    if world_size <= 1:
        return int(value)
    tensor = torch.tensor([float(value)], device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())
