"""Driver memory of building the model's entity stats as the number of entities grows: streamed from the
executors' sorted Parquet (today) vs one row per entity collected to the driver (before).

For each size a fresh process on ``local[2]`` builds the stats of ``--events-per-entity`` events per entity
(``spark.range`` rows, no input files) both ways, and prints one line per (size, mode): the driver
Python process's peak RSS growth during the build (``VmHWM`` of ``/proc/self/status`` minus the RSS
before it; the JVM driver's heap also holds the collected rows before, not measured here), and per size
the ratio today / before.

    python bench/entity_stats.py [--entities 1000000 4000000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from _proc import child_env  # bench/ is on sys.path when run as a script

CHILD = r"""
import sys, tempfile
from pathlib import Path

from _proc import status_mb as status  # bench/ is on PYTHONPATH (see main)

n, per, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
from pyspark.sql import SparkSession, functions as F
spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
         .config("spark.driver.memory", "4g").config("spark.driver.maxResultSize", "0").getOrCreate())
enc = spark.range(n * per).select(F.xxhash64(F.col("id") % n).alias("entity_hash"), F.lit(1).cast("long").alias("ip"))
out = Path(tempfile.mkdtemp()) / "entities.safetensors"
base = status("VmRSS")
if mode == "today":
    from ipinsights.train.prepare import write_entity_stats
    got = write_entity_stats(enc, str(out))[0]
else:  # before: one row per entity back to the driver, merged and serialised there
    import numpy as np
    from ipinsights.core.entities import EntityStats
    from ipinsights.score.spark_profiles import to_arrow
    rows = to_arrow(enc.groupBy("entity_hash").count())
    stats = EntityStats.from_hash_counts(rows["entity_hash"].to_numpy().view(np.uint64), rows["count"].to_numpy())
    out.write_bytes(stats.to_bytes())
    got = len(stats)
assert got == n, (got, n)
print(status("VmHWM") - base)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entities", type=int, nargs="+", default=[1_000_000, 4_000_000])
    p.add_argument("--events-per-entity", type=int, default=2)
    args = p.parse_args()
    for n in args.entities:
        peaks = {}
        for mode in ("before", "today"):
            child = [sys.executable, "-c", CHILD, str(n), str(args.events_per_entity), mode]
            out = subprocess.run(child, check=True, capture_output=True, text=True, env=child_env())
            peaks[mode] = float(out.stdout.split()[-1])
            print(f"entities={n} {mode}_driver_peak_growth_mb={peaks[mode]:.0f}")
        print(f"entities={n} today_vs_before={peaks['today'] / max(peaks['before'], 1.0):.2f}")


if __name__ == "__main__":
    main()
