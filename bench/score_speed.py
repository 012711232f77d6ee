"""Scoring speed: the Spark job's UDF path on ``local[2]`` against the same work in process.

Pairs: ``--pairs`` (10M) of 10k entities ``user_N`` (all seen in training, most of them past the
learning period), uniformly random IPv4 addresses and login times of one day, written once as Parquet
(not timed). The model has the tutorial's shape (20k entity vectors, ``--vector-dim`` 128), randomly
initialised: speed does not depend on what was learned. It comes with what the job scores with:
entity stats, entity profiles (population counts of the /24s and /16s of a million of the pairs) and
calibrated-style thresholds, so every row runs the whole verdict (rule, prior, percentiles, level,
normal percentile).

Figures (one per line, ``name=value``):

* ``spark_warmup_s``: scoring (and writing) 50k pairs first, untimed otherwise: Python workers importing
  torch and loading the model, the JVM compiling its hot paths (once per job)
* ``spark_noop_pairs_per_s``: read Parquet -> score -> verdict, into Spark's ``noop`` sink (scoring cost)
* ``spark_parquet_pairs_per_s``: the same, written as the job writes its scores table (end to end)
* ``spark_noop_cpu_us_per_pair`` / ``spark_parquet_cpu_us_per_pair``: CPU time of the JVM and its Python
  workers per pair; ``*_ideal_pairs_per_s`` = 2 cores / that: what an otherwise idle machine would do
  (wall-clock figures drop when someone else is using the cores; CPU time much less)
* ``spark_unscored_parquet_cpu_us_per_pair`` / ``*_ideal_pairs_per_s``: the Parquet run with a UDF that
  scores nothing (constant score columns): Spark's own share (read, Arrow both ways, write), the floor
  of this design however fast the model gets
* ``inprocess_job_cpu_us_per_pair`` / ``*_ideal_pairs_per_s``: the job's whole work without Spark, in one
  process: pyarrow reads the pairs' files, the workers' function scores them, pyarrow writes the scores
* ``inprocess_udf_pairs_per_s``: the Python workers' function (``worker.batch_mapper`` over the job's
  ``batches.score_batch``) over the same pairs as Arrow batches of ``--arrow-batch`` rows, 1 torch thread, no
  Spark (what one worker could do)
* ``inprocess_1thread_pairs_per_s`` / ``inprocess_pairs_per_s``: ``Scorer.dot_product`` alone, with 1
  torch thread and with torch's default (the machine's cores)
* ``spark_overhead_ratio``: in-process dot products (all cores) / Spark noop (as measured since issue 6)
* ``spark_udf_overhead_ratio``: 2 x in-process UDF / Spark noop: what Spark costs on top of the same work

    python bench/score_speed.py [--pairs 10000000] [--vector-dim 128] [--arrow-batch 50000] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from _proc import tree_cpu_s  # bench/ is on sys.path when run as a script

from ipinsights.core.config import Hyperparameters, ModelOptions
from ipinsights.core.entities import ENTITY_FILE, EntityStats
from ipinsights.core.hashing import hash_strings
from ipinsights.core.ip import ipv4_to_str, key_prefix, parse_ip
from ipinsights.score.batches import ScoringSetup, score_batch
from ipinsights.score.profile_rows import save_profiles
from ipinsights.score.profiles import QUANTILES, EntityProfiles, PopulationPrior
from ipinsights.score.rules import CAL_LEVELS, Thresholds
from ipinsights.score.schemas import SCORE_FIELDS
from ipinsights.score.scorer import BATCH_ROWS, Scorer
from ipinsights.score.spark_arrow import struct_type
from ipinsights.score.spark_scoring import score_events, scores_by_day
from ipinsights.score.worker import ScorerSource, batch_mapper
from ipinsights.storage.modelfile import model_fingerprint, profile_path, save_model
from ipinsights.train.trainer import build_model

N_ENTITIES = 10_000
SCORE_FIELD_NAMES = SCORE_FIELDS.names
DAY = "2024-01-09"
DAY_START = 1_704_758_400  # 2024-01-09T00:00:00Z
SPARK_CORES = 2


def write_pairs(out: Path, n: int, files: int = 8, seed: int = 0) -> pa.Table:
    """``n`` (entity, ip, ts) events in ``files`` Parquet files (vectorised: no Python string loop)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    parts = []
    for i, idx in enumerate(np.array_split(np.arange(n), files)):
        ent = pc.binary_join_element_wise(
            "user_", pc.cast(pa.array(rng.integers(0, N_ENTITIES, idx.size)), pa.string()), ""
        )
        ips = ipv4_to_str(rng.integers(1 << 24, 224 << 24, idx.size))
        # A day of login times, in order within a file (as the ingest job writes them): the job passes them through.
        secs = np.sort(rng.integers(DAY_START, DAY_START + 86_400, idx.size))
        ts = pa.array(secs * 1_000_000, pa.timestamp("us", tz="UTC"))
        t = pa.table({"entity": ent, "ip": ips, "ts": ts, "dt": pa.array([DAY] * idx.size)})
        pq.write_table(t, out / f"part-{i:05d}.parquet")
        parts.append(t)
    return pa.concat_tables(parts)


def write_model(out: Path, vector_dim: int, pairs: pa.Table | None = None, seed: int = 0) -> str:
    """A random model with entity stats (1-200 training events each) and, given ``pairs``, entity profiles."""
    rng = np.random.default_rng(seed)
    opts = ModelOptions()
    hp = Hyperparameters(num_entity_vectors=2 * N_ENTITIES, vector_dim=vector_dim)
    names = pc.binary_join_element_wise("user_", pc.cast(pa.array(np.arange(N_ENTITIES)), pa.string()), "")
    hashes = hash_strings(names, opts.hash_seed)
    stats = EntityStats.from_hash_counts(hashes, rng.integers(1, 200, N_ENTITIES))
    save_model(build_model(hp, opts, seed=seed), out, extra_files={ENTITY_FILE: stats.to_bytes()})
    if pairs is not None:
        keys = parse_ip(pairs.column("ip").slice(0, 1_000_000)).value
        subnets, sub_n = np.unique(key_prefix(keys, 24, 48), return_counts=True)
        networks, net_n = np.unique(key_prefix(keys, 16, 32), return_counts=True)
        none = np.zeros(N_ENTITIES + 1, np.int64)
        profiles = EntityProfiles(
            hashes=stats.hashes,
            score_quantiles=np.sort(rng.normal(0.0, 0.3, (N_ENTITIES, QUANTILES.size)), axis=1).astype(np.float32),
            net_offsets=none,
            net_keys=none[:0],
            net_counts=none[:0],
            asn_offsets=none,
            asns=none[:0],
            fingerprint=model_fingerprint(out),
            population=PopulationPrior(subnets, sub_n, networks, net_n),
            entities=np.asarray(names.to_pylist(), dtype=object)[np.argsort(hashes, kind="stable")],
        )
        save_profiles(profiles, profile_path(out))
    return str(out)


def thresholds() -> Thresholds:
    """Levels and normal-percentile tables shaped like a calibration's (values do not matter for speed)."""
    return Thresholds(
        high=0.5,
        medium=0.2,
        prior_high=12.0,
        prior_medium=10.0,
        score_table=tuple(np.linspace(-1.0, 1.0, CAL_LEVELS.size)),
        prior_table=tuple(np.linspace(5.0, 14.0, CAL_LEVELS.size)),
    )


def unscored(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` without the model: constant score columns of :data:`SCORE_FIELDS`' types (what Spark
    costs around a free UDF)."""
    constant = {"rule": "model_score", "level": "low", "training_count": 1}
    for batch in batches:
        zero = pa.array(np.zeros(batch.num_rows, np.int8))
        cols = [
            pa.array([constant.get(f.name, False if f.type == pa.bool_() else 0)], f.type).take(zero)
            for f in SCORE_FIELDS
        ]
        yield pa.RecordBatch.from_arrays([*batch.columns, *cols], names=[*batch.schema.names, *SCORE_FIELD_NAMES])


def inprocess_job(udf, files: list[Path], out: Path, batch_rows: int) -> None:
    """The job's whole work without Spark: pyarrow reads each file, the workers' function scores it in
    batches, pyarrow writes the scores (snappy, as Spark does)."""
    out.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        writer = None
        for batch in udf(pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=["entity", "ip", "ts"])):
            writer = writer or pq.ParquetWriter(out / f"part-{i:05d}.parquet", batch.schema, compression="snappy")
            writer.write_batch(batch)
        if writer is not None:
            writer.close()


def timed(n: int, fn, cpu=time.process_time) -> tuple[float, float]:
    """(pairs/s wall clock, CPU µs per pair) of ``fn()``."""
    c, t = cpu(), time.perf_counter()
    fn()
    wall, used = time.perf_counter() - t, cpu() - c
    return n / wall, used / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10_000_000)
    ap.add_argument("--vector-dim", type=int, default=128)
    ap.add_argument("--arrow-batch", type=int, default=50_000)
    ap.add_argument("--scorer-batch", type=int, default=BATCH_ROWS)
    ap.add_argument("--runs", type=int, default=1, help="repeat the timed parts")
    args = ap.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from ipinsights.storage.publish import write_partitions
    from ipinsights_jobs._common import build_spark

    tmp = Path(tempfile.mkdtemp(prefix="score-bench-"))
    try:
        table = write_pairs(tmp / "pairs", args.pairs)
        model = write_model(tmp / "model", args.vector_dim, table)
        profile = str(profile_path(model))
        setup = ScoringSetup(ScorerSource.with_profile(model, profile), args.scorer_batch, thresholds=thresholds())
        print(f"pairs={args.pairs}")
        print(f"vector_dim={args.vector_dim}")
        print(f"arrow_batch={args.arrow_batch}")
        print(f"scorer_batch={args.scorer_batch}")
        print(f"loadavg_before={os.getloadavg()[0]:.2f}")
        spark = build_spark(
            "score-bench",
            f"local[{SPARK_CORES}]",
            {
                "spark.ui.enabled": "false",
                "spark.sql.execution.arrow.maxRecordsPerBatch": str(args.arrow_batch),
                "spark.driver.memory": "2g",
            },
        )
        jvm = spark.sparkContext._gateway.proc.pid

        def spark_cpu() -> float:
            return tree_cpu_s(jvm)

        scorer = Scorer.load(model, batch_size=args.scorer_batch)
        batches = table.to_batches(max_chunksize=args.arrow_batch)
        udf = batch_mapper(setup.source, partial(score_batch, setup), setup.batch_size)
        df = spark.read.parquet(str(tmp / "pairs"))
        # Warm up both Python workers (imports, model load) and the JVM's JIT: once per job, not per pair.
        warmup = time.perf_counter()
        warm = score_events(df.limit(50_000).repartition(SPARK_CORES), setup)
        warm.write.format("noop").mode("overwrite").save()
        write_partitions(warm, str(tmp / "warm"))  # the Parquet writer's hot paths too
        print(f"spark_warmup_s={time.perf_counter() - warmup:.1f}")
        from pyspark.sql import functions as F
        from pyspark.sql.types import StructType

        day = df.where(F.col("dt") == DAY).select("entity", "ip", "ts")  # as the job scores a day (see scores_by_day)
        bare_schema = StructType(day.schema.fields + struct_type(SCORE_FIELDS).fields)
        bare = day.mapInArrow(unscored, bare_schema).withColumn("dt", F.lit(DAY))
        files = sorted((tmp / "pairs").glob("*.parquet"))
        for run in range(1, args.runs + 1):
            scored = scores_by_day(df, [DAY], setup)  # the job's scores table rows
            noop, noop_cpu = timed(args.pairs, scored.write.format("noop").mode("overwrite").save, spark_cpu)
            parquet, parquet_cpu = timed(args.pairs, partial(write_partitions, scored, str(tmp / "scores")), spark_cpu)
            bare_cpu = timed(args.pairs, partial(write_partitions, bare, str(tmp / "bare")), spark_cpu)[1]
            shutil.rmtree(tmp / "bare", ignore_errors=True)
            torch.set_num_threads(1)  # as in a Spark worker
            next(udf(iter(batches[:1])))  # load the scorer outside the timing, as a worker's first batch does
            udf_rate, udf_cpu = timed(args.pairs, lambda: sum(b.num_rows for b in udf(iter(batches))))
            job_cpu = timed(args.pairs, partial(inprocess_job, udf, files, tmp / "inprocess", args.arrow_batch))[1]
            shutil.rmtree(tmp / "inprocess", ignore_errors=True)
            rates = {}
            for threads in sorted({1, os.cpu_count() or 1}):
                torch.set_num_threads(threads)

                def dots() -> None:
                    for chunk in table.to_batches(max_chunksize=1_000_000):  # bounded memory, same work
                        scorer.dot_product(chunk.column("entity"), chunk.column("ip"))

                rates[threads] = timed(args.pairs, dots)[0]
            best = max(rates.values())
            print(f"run={run}")
            print(f"spark_partitions={df.rdd.getNumPartitions()}")
            print(f"spark_noop_pairs_per_s={noop:,.0f}")
            print(f"spark_parquet_pairs_per_s={parquet:,.0f}")
            print(f"spark_noop_cpu_us_per_pair={noop_cpu:.2f}")
            print(f"spark_parquet_cpu_us_per_pair={parquet_cpu:.2f}")
            print(f"spark_noop_ideal_pairs_per_s={SPARK_CORES / noop_cpu * 1e6:,.0f}")
            print(f"spark_parquet_ideal_pairs_per_s={SPARK_CORES / parquet_cpu * 1e6:,.0f}")
            print(f"spark_unscored_parquet_cpu_us_per_pair={bare_cpu:.2f}")
            print(f"spark_unscored_parquet_ideal_pairs_per_s={SPARK_CORES / bare_cpu * 1e6:,.0f}")
            print(f"inprocess_udf_pairs_per_s={udf_rate:,.0f}")
            print(f"inprocess_udf_cpu_us_per_pair={udf_cpu:.2f}")
            print(f"inprocess_job_cpu_us_per_pair={job_cpu:.2f}")
            print(f"inprocess_job_ideal_pairs_per_s={SPARK_CORES / job_cpu * 1e6:,.0f}")
            print(f"inprocess_1thread_pairs_per_s={rates[1]:,.0f}")
            print(f"inprocess_pairs_per_s={best:,.0f}")
            print(f"spark_overhead_ratio={best / noop:.2f}")
            print(f"spark_udf_overhead_ratio={SPARK_CORES * udf_rate / noop:.2f}")
            print(f"loadavg={os.getloadavg()[0]:.2f}")
        spark.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
