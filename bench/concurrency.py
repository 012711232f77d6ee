"""The concurrent fault suite: two runs of each job started together into one output, one of them faulted.

    python bench/concurrency.py [--trials 20] [--jobs ingest,score,train] [--seed 32] [--work DIR]

Per job, ``--trials`` trials (``tests/concurrency.py``): two runs started together as threads of one process
sharing its Spark session (ingest: one day, overlapping log files, into a table holding another file's rows
of that day; score: the same day at two thresholds; train: the same --output with two seeds). One of them,
drawn at random, is crashed (stops for good at a random commit step, its heartbeat with it; the scheduler's
retry follows), frozen (stops at a random fence, its heartbeat too, and is resumed after the other finished:
it must find its lease taken over) or held (a slow live run: stops at a random commit step until the other
one waits for it). Leases expire by moving the store's clock, never by sleeping. A crashed or fenced run is
retried. The output is then compared row by row with what one clean run writes.

Prints per job ``JOB_trials=``, ``JOB_runs=``, ``JOB_crashes=``, ``JOB_waits=`` (runs that waited for a
lease), ``JOB_takeovers=`` (leases taken from a stopped run), ``JOB_fenced_publishes=`` (runs stopped by
the fence before a publish move), ``JOB_rows_lost=``, ``JOB_rows_duplicated=`` (a mix of two runs' outputs
counts in both), ``JOB_seconds=``; exits 1 if any trial lost or duplicated a row or a run failed otherwise.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the suite's harness

TTL = 10.0  # seconds: a waiting run looks every TTL/20 (the clock, not time, expires a silent lease)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--jobs", default="ingest,score,train")
    p.add_argument("--seed", type=int, default=32)
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    args = p.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from concurrency import Tally, four_days, ingest_job, score_job, small_model, train_job, trial

    from ipinsights_jobs._common import build_spark, setup_logging

    setup_logging()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-concurrency-"))
    spark = build_spark("bench-concurrency", "local[2]", {"spark.ui.enabled": "false"})
    jobs = args.jobs.split(",")
    events = four_days(work) if {"score", "train"} & set(jobs) else None
    model = small_model(events, work / "model-run") if "score" in jobs else None
    rng = random.Random(args.seed)
    failed = False
    for name in jobs:
        base = work / name
        if name == "ingest":
            job = ingest_job(spark, base / "setup", TTL)
        elif name == "score":
            job = score_job(spark, events, model, base / "setup", TTL)
        else:
            job = train_job(spark, events, base / "setup", TTL)
        job.count(base / "count")
        tally = Tally(name)
        started = time.perf_counter()
        for i in range(args.trials):
            trial(job, base / f"t{i}", rng, tally, TTL)
            shutil.rmtree(base / f"t{i}", ignore_errors=True)
        figures = {
            "trials": tally.trials,
            "runs": tally.runs,
            "crashes": tally.crashes,
            "waits": tally.waits,
            "takeovers": tally.takeovers,
            "fenced_publishes": tally.fenced,
            "rows_lost": tally.lost,
            "rows_duplicated": tally.duplicated,
            "seconds": round(time.perf_counter() - started, 1),
        }
        for key, value in figures.items():
            print(f"{name}_{key}={value}", flush=True)
        for f in tally.failures:
            print(f"# {f}", flush=True)
        failed = failed or bool(tally.failures)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    os._exit(1 if failed else 0)  # (a crashed run's thread never ends: do not wait for it)


if __name__ == "__main__":
    sys.exit(main())
