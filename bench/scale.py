"""Peak memory of a training rank as the data grows: its shard streamed (today) or read whole (before).

For each size, tutorial-shape pairs are written as 16 bucket files of work rows (row groups of
``--row-group`` rows), and a fresh process per (size, mode) trains ``--steps`` steps on its shard:
``stream`` through :func:`ipinsights.train.distributed.data_for_epoch` (a shuffle buffer of
``--buffer-rows``), ``memory`` through :func:`ipinsights.train.spec.read_pairs` (the whole shard, as the
rank did before). Prints one line per run: peak RSS (``VmHWM`` of ``/proc/self/status``), its growth
against the smallest size, the wait for the first step (the reading) and the steps per second after
it (compare the two modes' rates within one run of this script: the machine's load changes between runs).

    python bench/scale.py [--pairs 2000000 8000000 32000000] [--steps 300] [--modes stream memory]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_spec = importlib.util.spec_from_file_location("train_speed", Path(__file__).with_name("train_speed.py"))
train_speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_speed)

from _proc import status_mb  # noqa: E402  (bench/ is on sys.path when run as a script)

N_BUCKETS = 16


def write_buckets(folder: Path, n_pairs: int, row_group: int) -> list[list[str]]:
    """Tutorial-shape pairs as work files, each row in a random bucket (as the Spark side writes them)."""
    data = train_speed.tutorial_pairs(n_pairs)
    bucket = np.random.default_rng(1).integers(0, N_BUCKETS, n_pairs)
    files = []
    for b in range(N_BUCKETS):
        sel = bucket == b
        f = folder / f"bucket-{b}.parquet"
        # Work files hold entity hashes; hashes below num_entity_vectors are their own rows.
        pq.write_table(
            pa.table({"entity_hash": data.entity_rows[sel], "ip": data.ips[sel]}), f, row_group_size=row_group
        )
        files.append([str(f)])
    return files


def child(args: argparse.Namespace) -> None:
    """One rank of a 1-rank world: ``--steps`` steps on its shard, then its peak RSS and rate as JSON."""
    import torch

    from ipinsights.core.config import ModelOptions, TrainOptions
    from ipinsights.train.distributed import data_for_epoch
    from ipinsights.train.spec import read_pairs
    from ipinsights.train.trainer import Trainer, build_model

    torch.set_num_threads(args.threads)
    hp = train_speed.tutorial_hyperparameters()
    buckets = json.loads(Path(args.child).read_text())
    trainer = Trainer(build_model(hp, ModelOptions(), seed=0), hp, TrainOptions(progress_bar="off"))
    t0 = time.perf_counter()
    if args.mode == "stream":
        source = data_for_epoch(buckets, 0, 1, 1, 0, hp.num_entity_vectors, args.buffer_rows)
        batches = source.batches(hp.mini_batch_size)
    else:
        pairs = read_pairs([f for b in buckets for f in b], hp.num_entity_vectors)
        order = np.random.default_rng([0, 1, 0]).permutation(len(pairs))
        batches = pairs.batches(hp.mini_batch_size, "cpu", order)
    trainer._step(*next(batches))
    t1 = time.perf_counter()  # the first step waits for the reading (all of it, or the buffer's first fill)
    for _, (ent, ips) in zip(range(args.steps - 1), batches, strict=False):
        trainer._step(ent, ips)
    t2 = time.perf_counter()
    batches.close()
    print(
        json.dumps(
            {
                "peak_rss_mb": status_mb("VmHWM"),
                "first_step_seconds": t1 - t0,
                "steps_per_second": (args.steps - 1) / (t2 - t1),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, nargs="+", default=[2_000_000, 8_000_000, 32_000_000])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--modes", nargs="+", choices=["stream", "memory"], default=["stream", "memory"])
    ap.add_argument("--buffer-rows", type=int, default=1_000_000)
    ap.add_argument("--row-group", type=int, default=131_072)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the rank")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    print(f"steps={args.steps} buffer_rows={args.buffer_rows} row_group={args.row_group} threads={args.threads}")
    first: dict[str, float] = {}
    for n in sorted(args.pairs):
        with tempfile.TemporaryDirectory() as tmp:
            spec = Path(tmp) / "buckets.json"
            spec.write_text(json.dumps(write_buckets(Path(tmp), n, args.row_group)))
            for mode in args.modes:
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    str(spec),
                    "--mode",
                    mode,
                    "--steps",
                    str(args.steps),
                    "--buffer-rows",
                    str(args.buffer_rows),
                    "--threads",
                    str(args.threads),
                ]
                out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                rss = out["peak_rss_mb"]
                first.setdefault(mode, rss)
                print(
                    f"pairs={n} mode={mode} peak_rss_mb={rss:.0f} growth_vs_first={rss / first[mode]:.2f}",
                    f"first_step_seconds={out['first_step_seconds']:.1f}",
                    f"steps_per_second={out['steps_per_second']:.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
