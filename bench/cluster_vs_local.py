"""Wall time of the S3 pipeline on a Spark standalone cluster vs the same pipeline on local[2].

    python bench/cluster_vs_local.py [--epochs 3] [--backend torch] [--keep-logs DIR]

The pipeline of tests/test_cluster.py (generate -> ingest -> train -> score + report, each a
``./spark-submit.sh`` process, every path on a local S3 server), run once with ``--master local[2]`` and
once on a standalone cluster of a master and two 1-core workers (tests/cluster.py; its start-up is not
timed). Prints one figure per line: each run's seconds, and the ratio cluster / local per step and overall
(above 1: the cluster's separate executor JVMs and the network hops cost more than they give on one host).
``--keep-logs DIR`` copies every step's driver log there (e.g. to read the training progress lines).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the cluster and S3 helpers

from cluster import (
    BUCKET,
    GENERATE,
    Bucket,
    StandaloneCluster,
    Submitter,
    ingest_args,
    s3_server,
    score_args,
    train_args,
)

MODEL = ["--config", "conf/demo.yml", "--num_entity_vectors=1000", "--vector_dim=16"]


def pipeline(master: str, root: Path, epochs: int, backend: str, keep_logs: Path | None) -> dict[str, float]:
    """Run every step on ``master`` against a fresh S3 server; seconds per step."""
    from ipinsights.synth import read_spec

    times: dict[str, float] = {}
    with s3_server() as endpoint:
        cwd, logs = root / "cwd", root / "logs"
        cwd.mkdir()
        logs.mkdir()
        submit = Submitter(master, endpoint, cwd, logs)
        bucket = Bucket(endpoint)
        events, run = f"s3://{BUCKET}/events", f"s3://{BUCKET}/run"

        def step(name: str, job: str, args: list[str]) -> None:
            started = time.perf_counter()
            submit.run(job, args, name)
            times[name] = time.perf_counter() - started

        step("generate", "generate", ["--output", str(root / "synth"), "--spark", *GENERATE])
        bucket.upload_tree(root / "synth" / "logs", "logs")
        spec = read_spec(root / "synth")
        dates = {split: spec.split_dates(split) for split in ("train", "validation", "test")}
        step("ingest", "ingest", ingest_args(f"s3://{BUCKET}/logs", events))
        step("train", "train", [*train_args(events, run, dates, backend, epochs), *MODEL])
        step("score", "score", score_args(events, run, f"s3://{BUCKET}", dates))
        if keep_logs is not None:
            shutil.copytree(logs, keep_logs / master.replace("/", "").replace(":", "_"), dirs_exist_ok=True)
    times["total"] = sum(times.values())
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--backend", choices=["torch", "horovod"], default="torch")
    p.add_argument("--keep-logs", type=Path, default=None, help="copy each step's log to this folder")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="cluster-vs-local-") as tmp:
        root = Path(tmp)
        (root / "local").mkdir()
        local = pipeline("local[2]", root / "local", args.epochs, args.backend, args.keep_logs)
        with StandaloneCluster(root / "cluster-daemons") as cluster:
            (root / "cluster").mkdir()
            on_cluster = pipeline(cluster.master_url, root / "cluster", args.epochs, args.backend, args.keep_logs)
    for name in local:
        print(f"local_{name}_s={local[name]:.1f}")
        print(f"cluster_{name}_s={on_cluster[name]:.1f}")
        print(f"cluster_vs_local_{name}={on_cluster[name] / local[name]:.2f}")


if __name__ == "__main__":
    main()
