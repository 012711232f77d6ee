"""Ingest speed: the tutorial's pandas parsing vs the Spark ingest job, on a tutorial-scale log.

    python bench/ingest_speed.py [--work DIR] [--lines 3000000] [--fallback]

Uses the project's generator (``jobs/generate.py``, 10k users over 10 days, about 3M lines, with
``devices: realistic``: each user's 1-3 devices, about 3,800 distinct user agents among the logins, as
real logs have: browsers at several versions, phones' models, in-app browsers, the service's app, scripts;
and bots among the other requests) when it imports, else a numpy line-maker below (user agents from the
generator's device catalogue, one device per user). The ingest parses each login's user agent, so the
parsing cost is in its time. pandas reads one uncompressed file (as the tutorial does);
Spark reads the same lines (the generator's files, or the file cut in pieces). Prints
``pandas_seconds=``, ``spark_seconds=`` (the ingest with the shipped settings, here the ``arrow``
engine, on a started session, as pandas' time excludes starting Python), ``spark_startup_seconds=``,
``speedup=``; the same run again in that session (``spark_second_run_seconds=``,
``speedup_second_run=``: the Python workers are started and warm by then); and the ``spark`` engine
(Spark's text source, the classifier as an Arrow UDF, Spark's Parquet writer) in that session too
(``spark_engine_seconds=``, ``speedup_spark_engine=``; its first run in the session pays for the JVM's
compilation of its code paths, the text source's and Parquet writer's: then again, warm, as
``spark_engine_second_run_seconds=``, ``speedup_spark_engine_second_run=``). ``*_cpu_seconds`` are CPU
time of the JVM and its Python workers (steadier than wall clock when the machine is shared).

To compare two commits on the same lines, prepare ``--work`` with this one, then run the other commit's
copy of this script with the same ``--work``: it finds the logs there and ingests them as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from _proc import tree_cpu_s  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]


def user_agents(users: int, seed: int = 0) -> pa.Array:
    """One device's user agent per user, drawn by market share from the generator's catalogue."""
    import datetime as dt

    from ipinsights.synth.devices import market_devices, render_agents

    rng = np.random.default_rng(seed)
    return render_agents(*market_devices(rng, dt.date(2026, 10, 1), rng.integers(0, 10, users)))


def make_lines(n: int, seed: int = 0, users: int = 10_000, days: int = 10) -> pa.Array:
    """Combined-format login lines (90% ``GET /login_success``), mixed UTC offsets, each user's own user
    agent, vectorised."""
    rng = np.random.default_rng(seed)
    ip = rng.integers(1 << 24, 0xDF000000, n, dtype=np.int64)
    ips = pc.binary_join_element_wise(*[pc.cast(pa.array((ip >> s) & 255), pa.string()) for s in (24, 16, 8, 0)], ".")
    secs = np.sort(rng.integers(0, days * 86400, n))
    offs = rng.choice(np.array([0, 0, 0, 60, -300, 330, -480]), n)
    local = np.datetime64("2026-10-01T00:00:00") + (secs + offs * 60).astype("timedelta64[s]")
    ts = pc.strftime(pa.array(local.astype("datetime64[s]")), format="%d/%b/%Y:%H:%M:%S", locale="C")
    hh, mm = np.abs(offs) // 60, np.abs(offs) % 60
    off = np.char.add(
        np.where(offs < 0, "-", "+"), np.char.add(np.char.zfill(hh.astype(str), 2), np.char.zfill(mm.astype(str), 2))
    )
    other = np.array(["GET /index.html HTTP/1.1", "POST /login HTTP/1.1", "GET /static/app.js HTTP/1.1"])
    req = np.where(rng.random(n) < 0.9, "GET /login_success HTTP/1.1", rng.choice(other, n))
    user_index = rng.integers(0, users, n)
    user = pc.binary_join_element_wise(pa.scalar("user_"), pc.cast(pa.array(user_index), pa.string()), "")
    status = pa.array(np.where(rng.random(n) < 0.97, "200", "404"))
    size = pa.array(rng.integers(200, 5000, n).astype(str))
    cols = [
        ips,
        " - ",
        user,
        " [",
        ts,
        " ",
        pa.array(off),
        '] "',
        pa.array(req),
        '" ',
        status,
        " ",
        size,
        ' "-" "',
        user_agents(users, seed).take(pa.array(user_index)),
        '"',
    ]
    return pc.binary_join_element_wise(*[pa.scalar(c) if isinstance(c, str) else c for c in cols], "")


def write_lines(lines: pa.Array, path: Path) -> None:
    """Write lines with one newline each, straight from Arrow's buffers (no Python strings)."""
    joined = pc.binary_join_element_wise(lines, pa.scalar(""), "\n")  # each line + "\n"
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    joined = joined.cast(pa.large_string())  # 64-bit offsets: 600 MB overflows int32
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)[joined.offset : joined.offset + len(joined) + 1]
    data = np.frombuffer(joined.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    path.write_bytes(data.tobytes())


def prepare(work: Path, n_lines: int, fallback: bool) -> tuple[Path, list[str]]:
    """(one uncompressed file for pandas, the inputs for Spark)."""
    single = work / "access.log"
    if not fallback:
        try:
            import ipinsights.synth  # noqa: F401

            out = work / "synth"
            manifest = out / "manifest.json"
            if manifest.exists() and json.loads(manifest.read_text())["spec"].get("devices") != "realistic":
                shutil.rmtree(out)  # a data set of before the devices: its few user agents measure no parsing
                single.unlink(missing_ok=True)
            if not out.exists():
                generate = [sys.executable, str(REPO / "jobs/generate.py"), "--output", str(out), "--devices=realistic"]
                subprocess.run(generate, check=True)
            files = sorted(str(p) for p in out.rglob("access-*.log"))
            if files:
                if not single.exists():
                    with open(single, "wb") as dst:
                        for f in files:
                            dst.write(Path(f).read_bytes())
                return single, files
        except Exception as exc:  # the generator is optional here
            print(f"# generator unavailable ({exc!r}); using the built-in line maker", file=sys.stderr)
    if not single.exists():
        write_lines(make_lines(n_lines), single)
    # Spark reads the same bytes as 8 files (a plain file would be split anyway; gzip could not be).
    parts = work / "parts"
    if not parts.exists():
        parts.mkdir()
        lines = single.read_bytes().splitlines(keepends=True)
        step = -(-len(lines) // 8)
        for i in range(8):
            (parts / f"access-{i}.log").write_bytes(b"".join(lines[i * step : (i + 1) * step]))
    return single, [str(parts / "access-*.log")]


def pandas_ingest(path: Path) -> int:
    """The tutorial's approach: read_csv on spaces, to_datetime with the offset, filter the logins.

    Its count of logins is lower than the job's: in the chunks of the file where a junk line makes
    ``status`` text, ``status == 200`` matches nothing (the tutorial's logs had no junk). It parses
    every line either way, so its time is the tutorial's.
    """
    import pandas as pd

    names = ["ip_address", "rcf_id", "user", "timestamp", "time_zone", "request", "status", "size", "referer", "agent"]
    df = pd.read_csv(
        path, sep=" ", header=None, names=names, na_values="-", on_bad_lines="skip", encoding_errors="replace"
    )
    df["timestamp"] = pd.to_datetime(
        df["timestamp"] + " " + df["time_zone"], format="[%d/%b/%Y:%H:%M:%S %z]", utc=True, errors="coerce"
    )
    df = df[(df["request"] == "GET /login_success HTTP/1.1") & (df["status"] == 200)]
    return len(df[["user", "ip_address", "timestamp"]].dropna())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ipinsights-ingest-bench")
    ap.add_argument("--lines", type=int, default=3_000_000)
    ap.add_argument("--fallback", action="store_true", help="use the built-in line maker, not jobs/generate.py")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    single, inputs = prepare(args.work, args.lines, args.fallback)
    print(f"# input: {single} ({single.stat().st_size / 1e6:.0f} MB); load average {os.getloadavg()[0]:.1f}")

    t, c = time.perf_counter(), time.process_time()
    n_pandas = pandas_ingest(single)
    pandas_s, pandas_cpu = time.perf_counter() - t, time.process_time() - c

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from ipinsights.core.config import load_config
    from ipinsights.ingest.job import IngestConfig, run_ingest
    from ipinsights_jobs._common import build_spark

    t = time.perf_counter()
    # 32 MB splits for the spark engine: with 2 cores, 128 MB splits leave one core idle for the last of 5 tasks.
    spark = build_spark(
        "ingest-bench",
        "local[2]",
        {
            "spark.ui.enabled": "false",
            "spark.sql.files.maxPartitionBytes": str(32 << 20),
            "spark.driver.memory": "2g",
        },
    )
    spark.range(1).count()
    startup_s = time.perf_counter() - t
    jvm = spark.sparkContext._gateway.proc.pid
    runs = []
    for engine in ("auto", "auto", "spark", "spark"):
        cfg = load_config(
            IngestConfig,
            REPO / "conf/ingest.yml",
            {"inputs": ",".join(inputs), "output": str(args.work / "events"), "max_bad_ratio": "1.0", "engine": engine},
        )
        t, c = time.perf_counter(), tree_cpu_s(jvm)
        summary = run_ingest(spark, cfg)
        runs.append((time.perf_counter() - t, tree_cpu_s(jvm) - c, summary))
    spark.stop()
    summary = runs[0][2]
    assert all(r[2]["kept_by_day"] == summary["kept_by_day"] for r in runs), "the engines disagree"
    print(f"# lines={summary['lines_read']} kept={summary['kept']} pandas_kept={n_pandas} engine={summary['engine']}")
    import pyarrow.parquet as pq

    agents = pq.read_table(args.work / "events", columns=["user_agent"]).column(0)
    print(f"# distinct user agents among the kept lines: {len(pc.unique(agents.cast(pa.string())))}")
    print(f"pandas_seconds={pandas_s:.2f}")
    print(f"pandas_cpu_seconds={pandas_cpu:.2f}")
    print(f"spark_seconds={runs[0][0]:.2f}")
    print(f"spark_cpu_seconds={runs[0][1]:.2f}")
    print(f"spark_startup_seconds={startup_s:.2f}")
    print(f"speedup={pandas_s / runs[0][0]:.2f}")
    print(f"spark_second_run_seconds={runs[1][0]:.2f}")
    print(f"spark_second_run_cpu_seconds={runs[1][1]:.2f}")
    print(f"speedup_second_run={pandas_s / runs[1][0]:.2f}")
    print(f"spark_engine_seconds={runs[2][0]:.2f}")
    print(f"spark_engine_cpu_seconds={runs[2][1]:.2f}")
    print(f"speedup_spark_engine={pandas_s / runs[2][0]:.2f}")
    print(f"spark_engine_second_run_seconds={runs[3][0]:.2f}")
    print(f"spark_engine_second_run_cpu_seconds={runs[3][1]:.2f}")
    print(f"speedup_spark_engine_second_run={pandas_s / runs[3][0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
