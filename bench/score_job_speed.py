"""The scoring job's CPU per pair with everything it does, against Spark's own floor, on a pipeline's world.

    python jobs/pipeline.py --workdir W --users 10000 --devices realistic    # first: a world with devices
    python bench/score_job_speed.py --workdir W [--runs 3]

Scores the first test day of W's events table as the score job does, with the sidecars the pipeline's
score step stored (copied beside a copy of the model: W is not written): the entity profiles joined on
per batch, the fused risk score with its device features, the thresholds; the rows are written as the
job writes its scores table (``scores_by_day``, ``write_partitions``). Against it, in the same session
and on the same rows:

* the floor: the same input through a ``mapInArrow`` that scores nothing (constant score columns, as
  ``bench/score_speed.py``'s): Spark's read, Arrow both ways and the write, what this design costs however
  fast the scoring gets;
* the model alone: the same rows scored without profiles, fusion or devices (the job before issue 30);
* without user agents: the whole job with the events' user-agent columns left out (the device features
  then unknown): what the device costs (issue 31).

Prints one figure per line, CPU of the JVM and its Python workers per pair (medians over ``--runs``):
``pairs=``, ``job_spark_jobs=`` and ``job_spark_stages=`` (what scoring and writing one day takes, skipped
stages included), ``job_cpu_us_per_pair=``, ``floor_cpu_us_per_pair=``, ``model_only_cpu_us_per_pair=``,
``agentless_cpu_us_per_pair=``, then ``job_over_floor_ratio=`` (issue 33's target: at most 1.5),
``job_over_model_only_ratio=`` and ``devices_ratio=`` (the job with user agents over the job without).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from datetime import date, timedelta
from functools import reduce
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _copy_model(run: Path, to: Path) -> Path:
    """The model folder and its sidecars (``model.*`` beside it) copied under ``to``."""
    to.mkdir(parents=True)
    shutil.copytree(run / "model", to / "model")
    for f in run.glob("model.*"):  # the sidecar files, and the profile's rows table (a folder)
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, to / f.name)
    return to / "model"


def main(argv: list[str] | None = None) -> int:
    from _proc import child_env, tree_cpu_s
    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType
    from score_speed import unscored

    from ipinsights.score.batches import ScoringSetup
    from ipinsights.score.config import ScoreConfig
    from ipinsights.score.rules import ANOMALY_SCORE
    from ipinsights.score.schemas import SCORE_FIELDS
    from ipinsights.score.spark_arrow import struct_type
    from ipinsights.score.spark_scoring import scores_by_day
    from ipinsights.score.spark_sidecars import resolve_sidecars
    from ipinsights.score.worker import ScorerSource
    from ipinsights.storage.events import read_events
    from ipinsights.storage.publish import write_partitions
    from ipinsights.synth import read_spec
    from ipinsights_jobs._common import build_spark

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, required=True, help="a jobs/pipeline.py workdir")
    p.add_argument("--runs", type=int, default=3)
    days_help = "days scored: the first test day and those before it (fewer fixed costs per pair)"
    p.add_argument("--days", type=int, default=1, help=days_help)
    p.add_argument("--target-fpr", type=float, default=0.01, help="the pipeline's (so its calibration is reused)")
    args = p.parse_args(argv)
    os.environ["PYTHONPATH"] = child_env()["PYTHONPATH"]  # the workers unpickle score_speed.unscored by name
    w = args.workdir
    spec = read_spec(w / "synth")
    (t0, t1), (v0, v1), (day, _) = (spec.split_dates(s) for s in ("train", "validation", "test"))
    tmp = Path(tempfile.mkdtemp(prefix="score-job-bench-"))
    spark = build_spark("score-job-bench", "local[2]", {"spark.ui.enabled": "false", "spark.driver.memory": "2g"})
    try:
        model = _copy_model(w / "run", tmp / "run")
        cfg = ScoreConfig(
            model=str(model),
            events=str(w / "events"),
            scores=str(tmp / "scores"),
            flagged=str(tmp / "flagged"),
            reports=str(tmp / "reports"),
            target_fpr=args.target_fpr,
            train_start_date=t0,
            train_end_date=t1,
            calibration_start_date=v0,
            calibration_end_date=v1,
        )
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_batch_size))
        full = resolve_sidecars(spark, cfg).setup
        assert full.profile_rows is not None and full.source.fusion is not None, "the pipeline stored no fusion"
        # The same thresholds' work on the model's own score (their values do not matter for speed).
        assert full.thresholds is not None
        on_model = replace(full.thresholds, score=ANOMALY_SCORE)
        model_only = ScoringSetup(ScorerSource(str(model)), full.batch_size, thresholds=on_model)
        first = (date.fromisoformat(day) - timedelta(days=args.days - 1)).isoformat()
        days = [(date.fromisoformat(first) + timedelta(days=i)).isoformat() for i in range(args.days)]
        events = read_events(spark, cfg.events, first, day)
        agentless = events.select("entity", "ip", "ts", "dt")
        pairs = events.count()
        jvm = spark.sparkContext._gateway.proc.pid
        bare = [events.where(F.col("dt") == d).select("entity", "ip", "ts") for d in days]
        unscored_type = StructType(bare[0].schema.fields + struct_type(SCORE_FIELDS).fields)
        floor = reduce(  # one day at a time, the day put back in the JVM: as scores_by_day does
            DataFrame.unionByName,
            [b.mapInArrow(unscored, unscored_type).withColumn("dt", F.lit(d)) for b, d in zip(bare, days, strict=True)],
        )

        def cpu(write: Callable[[str], None]) -> float:
            out = str(tmp / f"out-{os.urandom(4).hex()}")
            start = tree_cpu_s(jvm)
            write(out)
            used = tree_cpu_s(jvm) - start
            shutil.rmtree(out, ignore_errors=True)
            return used / pairs * 1e6

        cases = {
            "job": lambda out: write_partitions(scores_by_day(events, days, full), out),
            "floor": lambda out: write_partitions(floor, out),
            "model_only": lambda out: write_partitions(scores_by_day(agentless, days, model_only), out),
            "agentless": lambda out: write_partitions(scores_by_day(agentless, days, full), out),
        }
        sc = spark.sparkContext
        sc.setJobGroup("warm", "the first scoring, counted")
        cases["job"](str(tmp / "warm"))  # Python workers' imports and model loads, the JVM's JIT
        tracker = sc.statusTracker()
        jobs = [tracker.getJobInfo(j) for j in tracker.getJobIdsForGroup("warm")]
        stages = sorted({s for job in jobs if job is not None for s in job.stageIds})
        sc.setJobGroup("timed", "the timed runs")
        figures: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, write in cases.items():  # interleaved: the machine's load hits every case alike
                figures[name].append(cpu(write))
        median = {name: statistics.median(values) for name, values in figures.items()}
        print(f"pairs={pairs}")
        print(f"job_spark_jobs={len(jobs)}")
        print(f"job_spark_stages={len(stages)}")
        for name, value in median.items():
            print(f"{name}_cpu_us_per_pair={value:.2f}")
        print(f"job_over_floor_ratio={median['job'] / median['floor']:.3f}")
        print(f"job_over_model_only_ratio={median['job'] / median['model_only']:.3f}")
        print(f"devices_ratio={median['job'] / median['agentless']:.3f}")
    finally:
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
