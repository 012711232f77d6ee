"""Collectives time out naming the missing rank, instead of torch's 30-minute default (2 real gloo processes)."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket

import pytest
import torch

from ipinsights.train.comm import RankTimeoutError, TorchDistComm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, go_on: mp.synchronize.Event, out: mp.Queue) -> None:
    """Rank 0 waits in the per-epoch barrier; rank 1 joins the group but never reaches the barrier."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    try:
        comm = TorchDistComm(torch.device("cpu"), timeout_seconds=3)
        if rank == 0:
            comm.barrier()
            out.put("no error")
        else:
            go_on.wait(120)  # alive but stuck, as a hung executor would be
    except RankTimeoutError as exc:
        out.put(str(exc))
    finally:
        go_on.set()


def _run(world: int, started: int) -> str:
    ctx = mp.get_context("spawn")
    port, go_on, out = _free_port(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, world, port, go_on, out)) for r in range(started)]
    for p in procs:
        p.start()
    try:
        return out.get(timeout=120)
    finally:
        go_on.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()


@pytest.mark.slow
def test_a_rank_that_never_reaches_the_barrier_is_named():
    message = _run(world=2, started=2)
    assert message.startswith("rank 0 of 2: a rank did not reach the barrier within 3 s"), message
    assert "Rank 1" in message  # gloo's monitored barrier names the rank that did not arrive


@pytest.mark.slow
def test_a_rank_that_never_starts_ends_the_job():
    message = _run(world=2, started=1)
    assert message.startswith("rank 0 of 2: the other ranks did not join within 3 s"), message
