"""How ranks exchange gradients: one :class:`Comm` interface, with torch.distributed, Horovod and
single-process backends. Dense gradients are averaged; table gradients travel as (row ids, rows).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

log = logging.getLogger(__name__)

#: How long a rank waits for the others in any collective (``distributed.timeout_seconds``).
DEFAULT_TIMEOUT_SECONDS = 300.0


@dataclass
class CommStats:
    """Communication cost, accumulated by the comm wrappers."""

    calls: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def add(self, t0: float, nbytes: int) -> None:
        """Count one collective that started at ``t0`` (``time.perf_counter``) and moved ``nbytes``."""
        self.calls += 1
        self.bytes += nbytes
        self.seconds += time.perf_counter() - t0


class Comm(Protocol):
    """What the trainer needs from a distributed backend; every backend below implements it."""

    rank: int
    world_size: int
    stats: CommStats

    def allreduce_mean_(self, tensors: list[torch.Tensor]) -> None:
        """Average dense tensors across ranks, in place."""

    def allgather_rows(self, rows: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate every rank's (row ids, row gradients)."""

    def allreduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a small tensor across ranks (metrics, step counts)."""

    def min_int(self, value: int) -> int:
        """The smallest ``value`` over ranks (so that every rank runs the same number of steps)."""

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def close(self) -> None:
        """Leave the group (after a barrier, so that no rank is left waiting)."""


class LocalComm(Comm):
    """A world of one: every collective is the identity."""

    def __init__(self, device: torch.device | None = None, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.rank = 0
        self.world_size = 1
        self.stats = CommStats()

    def allreduce_mean_(self, tensors: list[torch.Tensor]) -> None:
        return None

    def allgather_rows(self, rows: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rows, grads

    def allreduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def min_int(self, value: int) -> int:
        return value

    def barrier(self) -> None:
        return None

    def close(self) -> None:
        return None


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One buffer for all dense gradients, so a step makes one collective instead of one per tensor."""
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflatten_into(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


class RankTimeoutError(RuntimeError):
    """Another rank did not answer a collective in time: it died, hangs, or never started."""


class TorchDistComm(Comm):
    """torch.distributed (gloo or NCCL), initialised from the env TorchDistributor sets.

    Every collective waits at most ``timeout_seconds`` (torch's default is 30 minutes, so one dead
    rank stalled the others that long); the per-epoch barrier is gloo's monitored barrier, which
    names the rank that did not arrive.
    """

    def __init__(self, device: torch.device, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        import datetime

        import torch.distributed as dist

        self.dist = dist
        self.timeout = datetime.timedelta(seconds=timeout_seconds)
        if not dist.is_initialized():
            try:
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=self.timeout)
            except RuntimeError as exc:  # torch's DistStoreError is one
                raise RankTimeoutError(
                    f"rank {os.environ.get('RANK', '?')} of {os.environ.get('WORLD_SIZE', '?')}: the other ranks"
                    f" did not join within {timeout_seconds:g} s ({exc}); see their executors' logs"
                ) from exc
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = device
        self.stats = CommStats()

    def allreduce_mean_(self, tensors: list[torch.Tensor]) -> None:
        t0 = time.perf_counter()
        flat = _flat(tensors)
        self.dist.all_reduce(flat)
        flat /= self.world_size
        _unflatten_into(flat, tensors)
        self.stats.add(t0, flat.numel() * flat.element_size())

    def allgather_rows(self, rows: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        n = torch.tensor([rows.numel()], device=self.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        self.dist.all_gather(sizes, n)
        sizes_i = [int(s.item()) for s in sizes]
        cap = max(sizes_i)
        # all_gather needs equal shapes: pad to the largest rank's row count, then trim.
        pr = torch.zeros(cap, dtype=rows.dtype, device=self.device)
        pr[: rows.numel()] = rows
        pg = torch.zeros(cap, grads.shape[1], dtype=grads.dtype, device=self.device)
        pg[: rows.numel()] = grads
        out_r = [torch.empty_like(pr) for _ in range(self.world_size)]
        out_g = [torch.empty_like(pg) for _ in range(self.world_size)]
        self.dist.all_gather(out_r, pr)
        self.dist.all_gather(out_g, pg)
        r = torch.cat([o[:k] for o, k in zip(out_r, sizes_i, strict=True)])
        g = torch.cat([o[:k] for o, k in zip(out_g, sizes_i, strict=True)])
        self.stats.add(t0, pr.numel() * pr.element_size() + pg.numel() * pg.element_size())
        return r, g

    def allreduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        t = values.to(self.device)
        self.dist.all_reduce(t)
        return t.cpu()

    def min_int(self, value: int) -> int:
        t = torch.tensor([value], device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MIN)
        return int(t.item())

    def barrier(self) -> None:
        if self.dist.get_backend() != "gloo":
            self.dist.barrier()
            return
        try:
            self.dist.monitored_barrier(timeout=self.timeout)
        except RuntimeError as exc:  # its message names the rank(s) that did not arrive
            raise RankTimeoutError(
                f"rank {self.rank} of {self.world_size}: a rank did not reach the barrier within"
                f" {self.timeout.total_seconds():g} s (distributed.timeout_seconds): {exc}"
            ) from exc

    def close(self) -> None:
        # A barrier before tearing down: without it one rank can exit while another still waits in
        # torch's exit barrier (seen to stall TorchDistributor runs on a standalone cluster).
        self.dist.barrier()
        self.dist.destroy_process_group()


class HorovodComm(Comm):
    """Horovod collectives (allgather takes rows of different counts natively)."""

    def __init__(self, device: torch.device, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        import horovod.torch as hvd

        self.hvd = hvd
        # Horovod reads its Gloo timeout from the environment only (default 30 s to start up).
        os.environ.setdefault("HOROVOD_GLOO_TIMEOUT_SECONDS", str(int(timeout_seconds)))
        hvd.init()
        self.rank = hvd.rank()
        self.world_size = hvd.size()
        self.device = device
        self.stats = CommStats()
        self._n = 0

    def _name(self, kind: str) -> str:
        self._n += 1
        return f"{kind}.{self._n}"

    def allreduce_mean_(self, tensors: list[torch.Tensor]) -> None:
        t0 = time.perf_counter()
        flat = _flat(tensors)
        _unflatten_into(self.hvd.allreduce(flat, op=self.hvd.Average, name=self._name("dense")), tensors)
        self.stats.add(t0, flat.numel() * flat.element_size())

    def allgather_rows(self, rows: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        r = self.hvd.allgather(rows, name=self._name("rows"))
        g = self.hvd.allgather(grads, name=self._name("grads"))
        self.stats.add(t0, rows.numel() * rows.element_size() + grads.numel() * grads.element_size())
        return r, g

    def allreduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return self.hvd.allreduce(values, op=self.hvd.Sum, name=self._name("sum"))

    def min_int(self, value: int) -> int:
        return int(self.hvd.allreduce(torch.tensor([value]), op=self.hvd.Min, name=self._name("min")).item())

    def barrier(self) -> None:
        self.hvd.allreduce(torch.zeros(1), name=self._name("barrier"))

    def close(self) -> None:
        self.barrier()
        self.hvd.shutdown()


#: Backend name -> its :class:`Comm`, built from the rank's device and the collectives' timeout.
COMMS: dict[str, Callable[[torch.device, float], Comm]] = {
    "torch": TorchDistComm,
    "horovod": HorovodComm,
    "local": LocalComm,
}
