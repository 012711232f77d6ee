"""Speed of the synthetic data generator at the SageMaker tutorial's scale (10,000 users, 10 days).

    python bench/generate_speed.py [--users=10000] [--days=10] [--gzip] [--output DIR]

Prints one ``name=value`` per line. The baseline is what a straightforward generator does per line: a
Python loop formatting each login line with an f-string and ``datetime.strftime``, timed on a
100,000-line sample of the same events; ``speedup_vs_python_loop`` compares it with the whole
vectorized run (generation, formatting, writing), ``format_speedup_vs_python_loop`` with the
vectorized formatting alone on the same sample.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ipinsights.synth import LOGIN_REQUEST, SynthSpec, generate_dataset
from ipinsights.synth.logs import format_lines

SAMPLE = 100_000
UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"


def python_loop(entity: list[str], ip: list[str], ts_s: list[int], offset: list[int]) -> float:
    """Seconds to format the sample one line at a time, the way a simple script would."""
    started = time.perf_counter()
    out = []
    for e, a, t, o in zip(entity, ip, ts_s, offset, strict=True):
        zone = dt.timezone(dt.timedelta(minutes=o))
        when = dt.datetime.fromtimestamp(t, zone).strftime("%d/%b/%Y:%H:%M:%S %z")
        out.append(f'{a} - {e} [{when}] "{LOGIN_REQUEST}" 200 476 "-" "{UA}"\n')
    "".join(out).encode()
    return time.perf_counter() - started


def vectorized(entity: pa.Array, ip: pa.Array, ts_s: np.ndarray, offset: np.ndarray) -> float:
    started = time.perf_counter()
    format_lines(ip, entity, ts_s, offset, LOGIN_REQUEST, "200", "476", "-", UA)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--output", type=Path, default=None, help="keep the data set here (default: a temp folder)")
    args = parser.parse_args()
    spec = SynthSpec(users=args.users, days=args.days, gzip=args.gzip)
    out = args.output or Path(tempfile.mkdtemp(prefix="synth-bench-"))
    try:
        started = time.perf_counter()
        paths = generate_dataset(out, spec, overwrite=True)
        seconds = time.perf_counter() - started
        counts = json.loads(paths.manifest.read_text())["counts"]
        sample = pq.read_table(paths.events).slice(0, SAMPLE)
    finally:
        if args.output is None:
            shutil.rmtree(out, ignore_errors=True)
    ts_s = pc.cast(sample["ts"], pa.int64()).to_numpy() // 1_000_000
    offset = sample["utc_offset_minutes"].to_numpy()
    entity, ip = sample["entity"].combine_chunks(), sample["ip"].combine_chunks()
    loop_s = python_loop(entity.to_pylist(), ip.to_pylist(), ts_s.tolist(), offset.tolist())
    fast_s = min(vectorized(entity, ip, ts_s, offset) for _ in range(3))
    n = sample.num_rows
    lines = counts["lines"]
    print(f"users={spec.users}")
    print(f"days={spec.days}")
    print(f"lines={lines}")
    print(f"login_events={counts['events']}")
    print(f"log_bytes={counts['log_bytes']}")
    print(f"seconds={seconds:.2f}")
    print(f"lines_per_second={lines / seconds:.0f}")
    print(f"mb_per_second={counts['log_bytes'] / seconds / 1e6:.1f}")
    print(f"python_loop_lines_per_second={n / loop_s:.0f}")
    print(f"speedup_vs_python_loop={(lines / seconds) / (n / loop_s):.1f}")
    print(f"format_speedup_vs_python_loop={loop_s / fast_s:.1f}")


if __name__ == "__main__":
    main()
