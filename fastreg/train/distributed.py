"""Several processes through torch.distributed (launched by torchrun): setup and small helpers.

``torchrun --nproc-per-node N -m fastreg.cli.train RECIPE`` sets RANK, WORLD_SIZE and
LOCAL_RANK; ``setup`` then joins the process group (NCCL on GPUs, gloo on CPUs) and picks this
process's device. ``fit`` reads rank and world size from the initialised group and wraps the
model in DistributedDataParallel; without a group everything is one process.
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn

import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str | None) -> torch.device:
    """Join the process group torchrun describes; return this rank's device (``cuda:LOCAL_RANK``
    when ``device`` is cuda or None with GPUs present, else cpu)."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device is None and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return torch.device("cuda", local) if use_cuda else torch.device(device or "cpu")


def teardown(wait: bool) -> None:
    """Leave the process group; ``wait``: first wait for every rank (rank 0 may still be
    writing its last checkpoint; a peer that leaves early can abort the others' sockets)."""
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def exit_now(code: int) -> NoReturn:
    """End this torchrun-launched process now with ``code``, skipping the interpreter's
    finalisation (call after ``teardown``; everything is written and closed by then).

    Why: with torch 2.13 the DistributedDataParallel wrapper keeps the gloo process group alive
    in C++ after ``destroy_process_group``, so its worker threads outlive ``main``. A worker
    that releases a finished collective still holding a Python tensor while the interpreter
    finalises must take the GIL, which ends the thread inside C++ and aborts the process
    ("terminate called without an active exception", SIGABRT; about 1 run in 20 on 2 CPUs)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. one rank was interrupted)."""
    if rank_and_size()[1] == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather(obj) -> list:
    """``obj`` of every rank, in rank order (one element without a group)."""
    if rank_and_size()[1] == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
