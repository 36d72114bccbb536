"""Process-group set-up and small collective helpers.

One program runs under ``deepspeed --num_gpus N``, ``torchrun --nproc_per_node N`` and plain
``python`` (one process): the launchers export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*, and for a
plain run we fill in a single-process group.  The backend is nccl on CUDA and gloo on CPU.
"""

from __future__ import annotations

import glob
import hashlib
import os
import socket
import sys

import torch
import torch.distributed as dist


def free_port() -> int:
    """A TCP port on localhost that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed(local_rank_arg: int | None = None) -> None:
    """Initialise the default process group once (gloo on CPU, nccl on CUDA)."""
    if dist.is_available() and dist.is_initialized():
        return
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        # `srun python megaproc/train.py` with one SLURM task per GPU (launch/train.sbatch).
        os.environ.update(RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=os.environ["SLURM_NTASKS"],
                          LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"))
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise RuntimeError("srun launch needs MASTER_ADDR and MASTER_PORT exported "
                               "(see launch/train.sbatch)")
    if "RANK" not in os.environ:  # plain `python train.py`: a group of one
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        # Port 0: the store binds a port the OS picks, so parallel single-process jobs never
        # race for one (nobody else connects to a group of one).
        os.environ["MASTER_PORT"] = "0"  # an inherited port belongs to some other group
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    if local_rank_arg is not None and "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(local_rank_arg)
    use_interpreter_extensions_dir()
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    deepspeed.init_distributed(dist_backend=backend, verbose=False)
    if not torch.cuda.is_available():
        unlink_shm_buffers()


def use_interpreter_extensions_dir() -> None:
    """Give this Python environment its own cache of JIT-compiled torch extensions.

    On CPU, ``deepspeed.init_distributed`` loads DeepSpeed's shared-memory comm op, which torch
    compiles into ``~/.cache/torch_extensions/py311_cpu/deepspeed_shm_comm`` whatever the
    environment.  The build's flags name the environment's include paths, so two virtual
    environments on one machine overwrite each other's build and every switch recompiles it
    (~40 s inside a run's start-up).  torch appends ``py311_cpu/<name>`` to
    ``TORCH_EXTENSIONS_DIR``; a value the user set is kept.
    """
    if "TORCH_EXTENSIONS_DIR" not in os.environ:
        tag = hashlib.sha256(os.path.realpath(sys.prefix).encode()).hexdigest()[:10]
        os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(
            os.path.expanduser("~"), ".cache", "torch_extensions", f"env-{tag}")


def build_cpu_comm_op() -> bool:
    """Compile DeepSpeed's CPU comm op now, where ``init_distributed`` will look for it (set-up
    calls this, as ``DS_BUILD_OPS`` would at install).  False when there is nothing to build
    (a GPU machine, or an op this machine cannot compile)."""
    use_interpreter_extensions_dir()
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    # The same lookup as deepspeed.comm.torch.build_shm_op (DeepSpeed 0.19).
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return False
    builder.load(verbose=False)
    return True


def unlink_shm_buffers() -> None:
    """Unlink this rank's DeepSpeed CPU shared-memory all-reduce buffer once every rank mapped it.

    DeepSpeed's CPU comm op (``ops/csrc/cpu/comm/shm.cpp``, 0.19) creates
    ``/dev/shm/deepspeed_allreduce_buffer_{uid}_{addr}_{port}_{rank}`` (~69 MB) per rank in
    ``init_distributed`` and maps every other rank's before returning, but never unlinks them:
    each multi-rank run leaked them until the machine's memory filled.  After a barrier all
    ranks hold their mappings, so removing the names is safe; the memory is freed when the
    processes exit.
    """
    if world_size() <= 1 or not os.path.isdir("/dev/shm"):
        return
    barrier()
    pattern = (f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_"
               f"{os.environ.get('MASTER_PORT', '*')}_{rank()}")
    for path in glob.glob(pattern):
        try:
            os.unlink(path)
        except OSError:
            pass


def shutdown() -> None:
    """Destroy the default process group (at the end of a run, after every rank is done with
    it): a process that exits with the group alive may abort in the backend's teardown.

    Through DeepSpeed's ``destroy_process_group``, which also drops the groups DeepSpeed cached
    (its clone of the world group); torch's alone would leave those pointing at the destroyed
    group, and the next group of the same process (tests, notebooks) would fail with "Group ...
    is not registered"."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    import deepspeed.comm  # the trainer's process group was set up through it

    try:
        barrier()  # no rank tears down while another still communicates
    finally:
        deepspeed.comm.destroy_process_group()


def rank() -> int:
    """Global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """Rank within this node."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on global rank 0."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def device() -> torch.device:
    """The device this rank computes on."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks; returns the tensor."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj) -> list:
    """Gather one picklable object from every rank (rank order)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from ``src`` to every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
