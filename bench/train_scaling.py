"""Data-parallel scaling: the same tutorial-shape data trained by 1 rank and by 2 ranks (gloo, CPU).

Runs the project's per-rank function (``ipinsights.train.distributed.train_worker``) directly: 1 rank in
this process, 2 ranks as two spawned processes joined by torch.distributed over loopback, i.e. what
TorchDistributor starts on executors, minus Spark's scheduling. Prints one figure per line: pairs/s
for each, their ratio, and the communication cost per step (seconds and bytes) of the 2-rank run.

    python bench/train_scaling.py [--pairs 500000] [--threads-per-rank 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch.multiprocessing as mp

from ipinsights.core.config import ModelOptions, TrainOptions, config_to_dict
from ipinsights.core.model import ip_level_sizes
from ipinsights.train.distributed import WorkerSpec, train_worker

_spec = importlib.util.spec_from_file_location("train_speed", Path(__file__).with_name("train_speed.py"))
train_speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_speed)


def _rank_main(rank: int, world: int, port: int, spec: WorkerSpec, queue) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    result = train_worker(spec)
    if rank == 0:
        queue.put(result)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, spec: WorkerSpec) -> dict:
    if world == 1:
        spec.backend = "local"
        return train_worker(spec)
    spec.backend = "torch"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, spec, queue)) for r in range(world)]
    for p in procs:
        p.start()
    result = queue.get(timeout=3600)
    for p in procs:
        p.join(timeout=120)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=500_000)
    ap.add_argument("--threads-per-rank", type=int, default=1)
    args = ap.parse_args()
    hp = train_speed.tutorial_hyperparameters()
    data = train_speed.tutorial_pairs(args.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        bucket = rng.integers(0, 16, len(data))
        buckets = []
        for b in range(16):
            f = Path(tmp) / f"bucket-{b}.parquet"
            sel = bucket == b
            # Work files hold entity hashes; rows < num_entity_vectors are their own rows.
            pq.write_table(pa.table({"entity_hash": data.entity_rows[sel], "ip": data.ips[sel]}), f)
            buckets.append([str(f)])
        results = {}
        for world in (1, 2):
            spec = WorkerSpec(
                hyperparameters=config_to_dict(hp),
                model_options=config_to_dict(ModelOptions()),
                train_options=config_to_dict(TrainOptions(num_threads=args.threads_per_rank, progress_bar="off")),
                model_dir=str(Path(tmp) / f"model-{world}"),
                buckets=buckets,
                checkpoint_dir=str(Path(tmp) / f"ckpt-{world}"),
            )
            results[world] = run(world, spec)
    one, two = results[1]["history"][-1], results[2]["history"][-1]
    steps = -(-args.pairs // hp.mini_batch_size)
    print(f"pairs={args.pairs}")
    print(f"threads_per_rank={args.threads_per_rank}")
    print(f"ranks1_pairs_per_second={one['pairs_per_second']:.0f}")
    print(f"ranks2_pairs_per_second={two['pairs_per_second']:.0f}")
    print(f"scaling_ratio_2_vs_1={two['pairs_per_second'] / one['pairs_per_second']:.2f}")
    print(f"ranks2_comm_seconds_per_step={two['comm_seconds'] / steps:.5f}")
    print(f"ranks2_comm_bytes_per_step={two['comm_bytes'] / steps:.0f}")
    print(f"ranks2_comm_share_of_epoch={two['comm_seconds'] / two['seconds']:.3f}")
    # what a dense allreduce of both tables' gradients would move per step, for comparison
    dense_bytes = 4 * (hp.num_entity_vectors + sum(ip_level_sizes(ModelOptions()))) * hp.vector_dim
    print(f"dense_table_allreduce_bytes_per_step={dense_bytes}")


if __name__ == "__main__":
    main()
