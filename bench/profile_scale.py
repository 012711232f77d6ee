"""Memory of the scoring side as the number of entities grows: the profile build on the driver and the
scoring Python workers, with profiles joined per batch (today) vs loaded whole (before).

For each entity count a fresh process on ``local[2]`` saves a small random model (fixed size: its
``num_entity_vectors`` does not grow with the entities, so what grows is the entities' own data), builds
the entity profiles of ``--events-per-entity`` training events per entity
(:func:`ipinsights.score.spark_profiles.build_profiles`), then scores one day of ``--day-events`` events
of random known entities:

* ``today``: the job's path, each batch joined with its own entities' profile rows;
* ``before``: as the job did before, every scoring worker loads the whole profile (and the driver
  gathers every profile row, as the old build collected them).

Prints one line per (size, mode): the driver Python process's peak RSS growth (``VmHWM`` minus the RSS
before the build), the largest peak RSS among the Python workers (``VmHWM`` of every ``pyspark.daemon``
process, read from ``/proc`` after the scoring, while they are still alive), then per mode the growth
ratios from the smallest to the largest size.

    python bench/profile_scale.py [--entities 250000 1000000 4000000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from _proc import child_env  # bench/ is on sys.path when run as a script

CHILD = r"""
import os, sys, tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from _proc import status_mb as status  # bench/ is on PYTHONPATH (see main)

n, per, day, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
from pyspark.sql import SparkSession, functions as F

from ipinsights.core.config import Hyperparameters, ModelOptions
from ipinsights.score.batches import ScoringSetup
from ipinsights.score.profile_rows import load_profiles
from ipinsights.score.spark_profiles import build_profiles
from ipinsights.score.spark_scoring import score_events
from ipinsights.score.worker import ScorerSource
from ipinsights.storage.modelfile import profile_path, save_model
from ipinsights.train.trainer import build_model

spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
         .config("spark.driver.memory", "4g").config("spark.driver.maxResultSize", "0").getOrCreate())
work = Path(tempfile.mkdtemp())
hp = Hyperparameters(num_entity_vectors=100_000, vector_dim=32)
model = str(save_model(build_model(hp, ModelOptions(), seed=0), work / "m"))
profile = str(profile_path(model))


def ips(i):
    # Each entity uses a few /24s of its own /16, like a user on a home and an office network.
    return F.format_string("10.%d.%d.%d", (i * 7) % 250, (i * 13 + F.col("id") % 3) % 250, F.col("id") % 200 + 1)


ent = F.col("id") % n
history = spark.range(n * per).select(F.format_string("user_%d", ent).alias("entity"), ips(ent).alias("ip"))
base = status("VmRSS")
header = build_profiles(history, model, profile)
assert header.entities == n, (header.entities, n)
if mode == "before":
    load_profiles(profile)  # the old build's one row per entity, gathered on the driver
driver = status("VmHWM") - base

pick = (F.xxhash64("id") % n + n) % n
events = spark.range(day).select(F.format_string("user_%d", pick).alias("entity"), ips(pick).alias("ip"))
source = ScorerSource.with_profile(model, profile)
if mode == "today":
    scored = score_events(events, ScoringSetup(source, profile_rows=header.files))
else:
    def whole(batches):
        from ipinsights.score.scorer import Scorer
        scorer = Scorer.load(model, profile=profile)  # every profile row in every worker
        for b in batches:
            a = scorer.assess(b.column("entity"), b.column("ip"))
            yield pa.RecordBatch.from_arrays([pa.array(a.entity_percentile)], ["entity_percentile"])
    scored = events.mapInArrow(whole, "entity_percentile double")
known = scored.where(F.col("entity_percentile").isNotNull()).count()
assert known > 0.9 * day, (known, day)
workers = []
for pid in os.listdir("/proc"):
    try:
        if pid.isdigit() and b"pyspark.daemon" in Path(f"/proc/{pid}/cmdline").read_bytes():
            text = Path(f"/proc/{pid}/status").read_text()
            workers.append(int(text.split("VmHWM:")[1].split()[0]) / 1024)
    except OSError:
        pass
print(driver, max(workers))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entities", type=int, nargs="+", default=[250_000, 1_000_000, 4_000_000])
    p.add_argument("--events-per-entity", type=int, default=2)
    p.add_argument("--day-events", type=int, default=200_000)
    p.add_argument("--modes", nargs="+", default=["before", "today"])
    args = p.parse_args()
    peaks: dict[str, list[tuple[float, float]]] = {m: [] for m in args.modes}
    for n in args.entities:
        for mode in args.modes:
            child = [sys.executable, "-c", CHILD, str(n), str(args.events_per_entity), str(args.day_events), mode]
            out = subprocess.run(child, check=True, capture_output=True, text=True, env=child_env())
            driver, worker = (float(x) for x in out.stdout.split()[-2:])
            peaks[mode].append((driver, worker))
            print(f"entities={n} {mode}_driver_peak_growth_mb={driver:.0f}", flush=True)
            print(f"entities={n} {mode}_worker_peak_rss_mb={worker:.0f}", flush=True)
    for mode, runs in peaks.items():
        (d0, w0), (d1, w1) = runs[0], runs[-1]
        print(f"{mode}_driver_growth_ratio={d1 / max(d0, 1.0):.2f}")
        print(f"{mode}_worker_growth_ratio={w1 / w0:.2f}")


if __name__ == "__main__":
    main()
