"""The processes of one job: rank, world size and the few collectives the loops need.

A job asking for more than one process is started by `torchrun` (see `worker.runner.engine_command`),
which sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; `init_from_env()` then joins the
process group (gloo on CPU; on CUDA NCCL for device tensors and gloo for the host-side counts and metrics).
Without those variables the job is one process and every collective here is the identity, so
single-process code paths stay exactly as they are.

Losses divide by the global counts of an optimizer step; `all_reduce_counts` sums a step's counts (ints,
floats, tuples, dataclasses of them) over the ranks so every rank divides by the same totals and the summed
gradients equal the gradient of the whole global batch. `gather_rows` concatenates per-row values (rewards,
lengths, entropies) of all ranks in rank order, which the online loop uses for statistics of the global batch.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Processes()


def from_env(env: dict[str, str] | None = None) -> Processes:
    """Rank and world size as torchrun exported them (one process when WORLD_SIZE is unset)."""
    env = dict(os.environ) if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return Processes(int(env["RANK"]), world, int(env.get("LOCAL_RANK", "0")))


def _backend(device: torch.device) -> str:
    # Counts and metrics are reduced as host tensors: on CUDA those go through gloo, the rest NCCL.
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def init_from_env(device: torch.device) -> Processes:
    """Join the job's process group when torchrun started several processes (idempotent)."""
    procs = from_env()
    if procs.active and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend=_backend(device))
    return procs


def init_alone(device: torch.device) -> None:
    """A process group of this one process, for a library that needs a group even then (DeepSpeed, which
    also reads LOCAL_RANK as a launcher would set it); the collectives here still see one process. Nothing
    happens when a group exists."""
    if torch.distributed.is_initialized():
        return
    os.environ.setdefault("LOCAL_RANK", str(device.index or 0))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = torch.distributed.HashStore()
    torch.distributed.init_process_group(backend=_backend(device), store=store, rank=0, world_size=1)


def current() -> Processes:
    """The rank and world of the initialised process group (one process when there is none)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return SINGLE
    return from_env()


def _leaves(obj: Any) -> list[float]:
    if isinstance(obj, bool) or obj is None:
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, torch.Tensor):
        return [float(obj)]
    if isinstance(obj, (tuple, list)):
        return [v for item in obj for v in _leaves(item)]
    if dataclasses.is_dataclass(obj):
        return [v for f in dataclasses.fields(obj) for v in _leaves(getattr(obj, f.name))]
    raise TypeError(f"cannot all-reduce a count of type {type(obj).__name__}")


def _rebuild(obj: Any, values: list[float]) -> Any:
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, int):
        return round(values.pop(0))
    if isinstance(obj, float):
        return values.pop(0)
    if isinstance(obj, torch.Tensor):
        return torch.tensor(values.pop(0), dtype=obj.dtype, device=obj.device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_rebuild(item, values) for item in obj)
    changes = {f.name: _rebuild(getattr(obj, f.name), values) for f in dataclasses.fields(obj)}
    return dataclasses.replace(obj, **changes)


def all_reduce_counts(counts: Any) -> Any:
    """The sum over ranks of a step's counts, in the same structure (float64: exact for any count)."""
    procs = current()
    if not procs.active:
        return counts
    values = torch.tensor(_leaves(counts), dtype=torch.float64)
    torch.distributed.all_reduce(values)
    return _rebuild(counts, values.tolist())


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity for one process)."""
    if current().active:
        torch.distributed.all_reduce(tensor)
    return tensor


def gather_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the ranks' `tensor`s concatenated along dim 0 in rank order, where this rank's rows start).

    Ranks may hold different numbers of rows; the other dimensions must agree. The result is on `tensor`'s
    device and identical on every rank. One process: (tensor, 0).
    """
    procs = current()
    if not procs.active:
        return tensor, 0
    host = tensor.detach().cpu()
    if host.dtype == torch.bool:  # gloo has no bool collectives
        rows, offset = gather_rows(host.to(torch.uint8))
        return rows.bool().to(tensor.device), offset
    sizes = torch.tensor([host.shape[0]], dtype=torch.long)
    all_sizes = [torch.zeros_like(sizes) for _ in range(procs.world)]
    torch.distributed.all_gather(all_sizes, sizes)
    counts = [int(s) for s in all_sizes]
    width = max(counts)
    padded = torch.zeros((width, *host.shape[1:]), dtype=host.dtype)
    padded[: host.shape[0]] = host
    parts = [torch.empty_like(padded) for _ in range(procs.world)]
    torch.distributed.all_gather(parts, padded)
    rows = torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)])
    return rows.to(tensor.device), sum(counts[: procs.rank])


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order (tensors inside should be on the CPU). One process: [obj]."""
    procs = current()
    if not procs.active:
        return [obj]
    out: list[Any] = [None] * procs.world
    torch.distributed.all_gather_object(out, obj)
    return out


def from_main(value: float) -> float:
    """Rank 0's `value` on every rank (a decision every rank must share, e.g. a coin flip; identity for one
    process)."""
    if not current().active:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    torch.distributed.broadcast(t, src=0)
    return float(t.item())


def object_from_main(obj: Any) -> Any:
    """Rank 0's picklable `obj` on every rank (identity for one process)."""
    if not current().active:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def shard(items: list[Any], procs: Processes) -> list[Any]:
    """This rank's contiguous share of `items`, split as evenly as possible (earlier ranks get one more)."""
    base, extra = divmod(len(items), procs.world)
    start = procs.rank * base + min(procs.rank, extra)
    return items[start : start + base + (1 if procs.rank < extra else 0)]


def barrier() -> None:
    if current().active:
        torch.distributed.barrier()
