"""Row-sparse (lazy) Adam for the embedding tables: only the rows a batch touched are updated and decayed."""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


class RowAdam:
    """Adam on the rows of a table that a step touched (lazy Adam), with coupled L2 weight decay.

    ``step(rows, grads)`` expects unique ``rows``. Bias correction uses the global step count, as
    TensorFlow's LazyAdam does, so a row that is touched rarely takes normal-sized steps when it is.
    Both moments of a row sit side by side (``state[row] = [m, v]``) so that a step reads and writes
    the optimiser state with one gather and one scatter: on a table far larger than the CPU caches
    the random row accesses, not the arithmetic, are what costs.
    """

    def __init__(self, table: torch.Tensor, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.table = table
        self.lr = lr
        self.weight_decay = weight_decay
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.state = torch.zeros(table.shape[0], 2, *table.shape[1:], dtype=table.dtype, device=table.device)
        self.steps = 0

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grads: torch.Tensor, params: torch.Tensor | None = None) -> None:
        """Update ``table[rows]``; ``params`` may pass ``table[rows]`` when the caller gathered it already."""
        self.steps += 1
        b1, b2 = self.beta1, self.beta2
        params = self.table.index_select(0, rows) if params is None else params.detach().clone()
        if self.weight_decay:
            grads = grads.add(params, alpha=self.weight_decay)
        st = self.state.index_select(0, rows)
        m, v = st[:, 0], st[:, 1]
        m.mul_(b1).add_(grads, alpha=1 - b1)
        v.mul_(b2).addcmul_(grads, grads, value=1 - b2)
        self.state.index_copy_(0, rows, st)
        bc1 = 1 - b1**self.steps
        bc2 = 1 - b2**self.steps
        denom = (v / bc2).sqrt_().add_(self.eps)
        params.addcdiv_(m, denom, value=-self.lr / bc1)
        self.table.index_copy_(0, rows, params)

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state, "steps": torch.tensor(self.steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.copy_(state["state"])
        self.steps = int(state["steps"])


def coalesce_rows(rows: torch.Tensor, grads: torch.Tensor, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum gradients of rows that several ranks touched, then average over ranks (like allreduce)."""
    uniq, inv = torch.unique(rows, return_inverse=True)
    summed = torch.zeros(uniq.numel(), grads.shape[1], dtype=grads.dtype, device=grads.device)
    summed.index_add_(0, inv, grads)
    return uniq, summed.div_(world_size)
