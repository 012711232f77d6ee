"""Scoring speed: the Spark job's UDF path on ``local[2]`` against in-process ``Scorer.dot_product``.

Pairs: ``--pairs`` (10M) of 10k entities ``user_N`` (all seen in training) and uniformly random IPv4
addresses, written once as Parquet (not timed). The model has the tutorial's shape (20k entity vectors,
``--vector-dim`` 128), randomly initialised: speed does not depend on what was learned.

Figures (one per line, ``name=value``):

* ``spark_noop_pairs_per_s``: read Parquet -> score -> verdict, into Spark's ``noop`` sink (scoring cost)
* ``spark_parquet_pairs_per_s``: the same, written as the job writes its scores table (end to end)
* ``inprocess_1thread_pairs_per_s`` / ``inprocess_pairs_per_s``: ``Scorer.dot_product`` over the same pairs,
  with 1 torch thread and with torch's default (the machine's cores)
* ``spark_overhead_ratio``: in-process (all cores) / Spark noop: what Spark costs on top of the model

    python bench/score_speed.py [--pairs 10000000] [--vector-dim 128] [--arrow-batch 20000] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ipinsights.config import Hyperparameters, ModelOptions
from ipinsights.entities import ENTITY_FILE, EntityStats
from ipinsights.ip import ipv4_to_str
from ipinsights.modelfile import save_model
from ipinsights.scorer import Scorer, Thresholds
from ipinsights.scoring import ScoringSetup, score_events
from ipinsights.trainer import build_model

N_ENTITIES = 10_000


def write_pairs(out: Path, n: int, files: int = 8, seed: int = 0) -> pa.Table:
    """``n`` (entity, ip) pairs in ``files`` Parquet files (vectorised: no Python string loop)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    parts = []
    for i, idx in enumerate(np.array_split(np.arange(n), files)):
        ent = pc.binary_join_element_wise(
            "user_", pc.cast(pa.array(rng.integers(0, N_ENTITIES, idx.size)), pa.string()), ""
        )
        ips = ipv4_to_str(rng.integers(1 << 24, 224 << 24, idx.size))
        t = pa.table({"entity": ent, "ip": ips, "dt": pa.array(["2024-01-09"] * idx.size)})
        pq.write_table(t, out / f"part-{i:05d}.parquet")
        parts.append(t)
    return pa.concat_tables(parts)


def write_model(out: Path, vector_dim: int) -> str:
    hp = Hyperparameters(num_entity_vectors=2 * N_ENTITIES, vector_dim=vector_dim)
    names = pc.binary_join_element_wise("user_", pc.cast(pa.array(np.arange(N_ENTITIES)), pa.string()), "")
    stats = EntityStats.from_entities(names, ModelOptions().hash_seed)
    save_model(build_model(hp, ModelOptions(), seed=0), out, extra_files={ENTITY_FILE: stats.to_bytes()})
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10_000_000)
    ap.add_argument("--vector-dim", type=int, default=128)
    ap.add_argument("--arrow-batch", type=int, default=20_000)
    ap.add_argument("--scorer-batch", type=int, default=8192)
    ap.add_argument("--runs", type=int, default=1, help="repeat the timed parts")
    args = ap.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from ipinsights_jobs._common import build_spark

    tmp = Path(tempfile.mkdtemp(prefix="score-bench-"))
    try:
        table = write_pairs(tmp / "pairs", args.pairs)
        model = write_model(tmp / "model", args.vector_dim)
        print(f"pairs={args.pairs}")
        print(f"vector_dim={args.vector_dim}")
        print(f"loadavg_before={os.getloadavg()[0]:.2f}")
        spark = build_spark(
            "score-bench", "local[2]",
            {"spark.ui.enabled": "false", "spark.sql.execution.arrow.maxRecordsPerBatch": str(args.arrow_batch),
             "spark.driver.memory": "2g"},
        )  # fmt: skip
        scorer = Scorer.load(model, batch_size=args.scorer_batch)
        for run in range(1, args.runs + 1):
            df = spark.read.parquet(str(tmp / "pairs"))
            scored = score_events(df, ScoringSetup(model, args.scorer_batch, thresholds=Thresholds(0.0)))
            t = time.perf_counter()
            scored.write.format("noop").mode("overwrite").save()
            noop = args.pairs / (time.perf_counter() - t)
            t = time.perf_counter()
            scored.write.mode("overwrite").partitionBy("dt").parquet(str(tmp / "scores"))
            parquet = args.pairs / (time.perf_counter() - t)
            rates = {}
            for threads in sorted({1, os.cpu_count() or 1}):
                torch.set_num_threads(threads)
                t = time.perf_counter()
                for chunk in table.to_batches(max_chunksize=1_000_000):  # bounded memory, same work
                    scorer.dot_product(chunk.column("entity"), chunk.column("ip"))
                rates[threads] = args.pairs / (time.perf_counter() - t)
            print(f"run={run}")
            print(f"spark_noop_pairs_per_s={noop:,.0f}")
            print(f"spark_parquet_pairs_per_s={parquet:,.0f}")
            print(f"inprocess_1thread_pairs_per_s={rates[1]:,.0f}")
            best = max(rates.values())
            print(f"inprocess_pairs_per_s={best:,.0f}")
            print(f"spark_overhead_ratio={best / noop:.2f}")
            print(f"loadavg={os.getloadavg()[0]:.2f}")
        spark.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
