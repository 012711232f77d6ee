"""The pipeline on a Spark standalone cluster (master + 2 workers on loopback), every path on S3.

generate (in the test) -> ingest -> train (torch, 2 ranks on the 2 executors; killed after its first checkpoint and
resumed) -> score + report, each one ``./spark-submit.sh --master spark://...`` in its own process, with
its working directory an empty folder that must stay empty: every input and output lives in a moto S3
bucket, reached by Spark through Hadoop's S3A connector (jars from ``scripts/fetch_s3a_jars.sh``) and by
the Python side (driver and executors) through pyarrow with the AWS environment. The horovod backend's
two ranks run through Spark in ``tests/test_distributed.py`` (on ``local[2]``: a cluster run of it cost
CI two more minutes for the same launch code). The cluster, the S3 helpers and the command lines are in
``tests/cluster.py`` (shared with ``bench/cluster_vs_local.py``; ``tests/test_deploy.py`` holds deploy/ to them).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cluster import (
    BUCKET,
    JAR_DIR,
    JARS,
    REPO,
    STEP_TIMEOUT,
    Bucket,
    Dates,
    Submitter,
    kill_group,
    last_json,
    prepare_lake,
    s3_server,
    score_args,
    tail,
    train_args,
)

EVENTS = f"s3://{BUCKET}/events"  # s3://: Spark maps it to s3a:// (no fs.s3.impl), the Python side to pyarrow
#: A small model, with small batches so that an epoch lasts long enough to be interrupted after a checkpoint.
MODEL = [
    "--config",
    "conf/demo.yml",  # the demo's learning rate and negatives (conf/train.yml: SageMaker's defaults)
    "--num_entity_vectors=1000",
    "--vector_dim=16",
    "--mini_batch_size=200",
    "--batch_metrics_publish_interval=100000",
    # AS and country levels from the generated ip2asn tables, read from the bucket by every rank and scorer.
    f"--model.asn_table=s3://{BUCKET}/world/networks.tsv,s3://{BUCKET}/world/networks-v6.tsv",
    "--model.asn_hash_buckets=4096",
]
EPOCHS = 2  # killed after the first checkpoint, resumed for the second: resume is what it checks


def uri_folders(*roots: Path) -> list[str]:
    """Every folder named like a URI scheme (``s3:``, ``s3a:``) under ``roots``: a URI taken for a local path."""
    return [os.path.join(d, n) for root in roots for d, dirs, _ in os.walk(root) for n in dirs if n.endswith(":")]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 for this module's jobs."""
    pytest.importorskip("moto.server", reason="pip install 'moto[server]' for the S3 tests")
    with s3_server() as endpoint:
        yield endpoint


@dataclass
class Lake:
    """The generated and ingested data set in the bucket, and how to submit more jobs against it."""

    bucket: Bucket
    submit: Submitter
    dates: Dates


@pytest.fixture(scope="module")
def lake(spark_cluster, s3_endpoint, tmp_path_factory) -> Lake:
    """The generated logs in s3://lake/logs/, ingested on the cluster into s3://lake/events."""
    if not all(j.exists() for j in JARS):
        pytest.skip(f"S3A jars not in {JAR_DIR}: run scripts/fetch_s3a_jars.sh")
    cwd = tmp_path_factory.mktemp("cwd")
    submit = Submitter(spark_cluster.master_url, s3_endpoint, cwd, tmp_path_factory.mktemp("logs"))
    bucket = Bucket(s3_endpoint)
    dates = prepare_lake(submit, bucket, tmp_path_factory.mktemp("scratch"), EVENTS)
    return Lake(bucket, submit, dates)


def train(lake: Lake, run: str, backend: str, epochs: int = EPOCHS) -> list[str]:
    return [*train_args(EVENTS, f"s3://{BUCKET}/{run}", lake.dates, backend, epochs), *MODEL]


def metrics(lake: Lake, run: str) -> list[dict]:
    return [json.loads(line) for line in lake.bucket.read(f"{run}/metrics.jsonl").decode().splitlines()]


@pytest.mark.oldest_spark
@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.timeout(2400)  # the session's cluster and the module's data set are made within the first test
def test_pipeline_on_cluster_with_s3(lake, spark_cluster):
    """ingest -> train (torch, with the ip2asn tables on S3; killed after epoch 1's checkpoint, resumed from S3)
    -> score (the model reads its tables from S3) -> report."""
    bucket, submit = lake.bucket, lake.submit
    # Train, and kill the job (its whole process group) as soon as the first checkpoint is in the bucket.
    proc, log_path = submit.start("train", train(lake, "run", "torch"), "train-killed")
    deadline = time.monotonic() + STEP_TIMEOUT
    first: list[str] = []
    while not first:
        assert proc.poll() is None, f"train ended ({proc.returncode}) before its first checkpoint:\n{tail(log_path)}"
        assert time.monotonic() < deadline, f"no checkpoint after {STEP_TIMEOUT} s:\n{tail(log_path)}"
        first = [k for k in bucket.keys("run/checkpoints/") if k.endswith(".pt")]
        time.sleep(0.2)
    assert proc.poll() is None, f"train ended ({proc.returncode}) before it could be killed:\n{tail(log_path)}"
    kill_group(proc)
    assert not bucket.keys("run/model/"), "the killed run must not have finished"
    latest = json.loads(bucket.read("run/checkpoints/latest.json"))
    # The application is gone from the cluster (its executors freed) before the rerun asks for them.
    _wait_apps_finished(spark_cluster)

    out = submit.run("train", [*train(lake, "run", "torch"), "--resume"], "train-resumed")
    summary = last_json(out)
    assert summary["epochs"] == EPOCHS, summary
    assert [m["epoch"] for m in metrics(lake, "run")] == list(range(1, EPOCHS + 1))
    resumed = json.loads(bucket.read("run/checkpoints/latest.json"))
    # It continued the killed run (same run id: a fresh start would have drawn a new one) up to the last epoch.
    assert resumed["run_id"] == latest["run_id"], (latest, resumed)
    assert resumed["epoch"] == EPOCHS, resumed
    keys = bucket.keys("run/")
    assert "run/model/model.json" in keys and "run/config.json" in keys, keys
    assert json.loads(bucket.read("run/model/model.json"))["asn_table_fingerprint"]

    # A fixed threshold: calibrating on S3 is tests/test_uris.py's (one Spark stage fewer on the cluster).
    args = [a for a in score_args(EVENTS, f"s3://{BUCKET}/run", f"s3://{BUCKET}", lake.dates) if "calibration" not in a]
    args[args.index("--target-fpr") : args.index("--target-fpr") + 2] = ["--threshold", "0.0"]
    out = submit.run("score", args)
    assert out.count("\t") >= 2, out[-3000:]
    keys = bucket.keys()
    for day in lake.dates["test"]:
        for table in ("scores", "flagged", "cases"):
            assert any(k.startswith(f"{table}/dt={day}/") and k.endswith(".parquet") for k in keys), (table, day)
        assert f"reports/dt={day}/report.html" in keys, keys
    assert any(k.startswith("run/model.profile.rows-") for k in keys), keys  # the executors wrote it to S3
    _assert_nothing_local(submit, spark_cluster)


def _wait_apps_finished(cluster, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while cluster.state().get("activeapps"):
        assert time.monotonic() < deadline, f"the killed application still holds the cluster:\n{cluster.state()}"
        time.sleep(0.5)


def _assert_nothing_local(submit: Submitter, cluster) -> None:
    """The jobs' working directory is still empty, and no URI became a local folder anywhere: not in the
    driver's working directory, the repository, or the executors' working directories."""
    assert sorted(p.name for p in submit.cwd.iterdir()) == [], list(submit.cwd.rglob("*"))
    assert not uri_folders(submit.cwd, cluster.root), "a URI was taken for a local path"
    assert not [p for p in REPO.iterdir() if p.name.endswith(":")], "a URI was taken for a local path"
