"""The s3:// routes against a real S3 API on loopback (moto's server), for both ingest engines.

``spark`` engine: Hadoop's S3A connector. pyspark's pip package has none and Maven may be
unreachable, so the jars come from ``scripts/fetch_s3a_jars.sh`` (hadoop-aws 3.3.1 + its AWS SDK
bundle, from the sagemaker-pyspark sdist on PyPI). ``arrow`` engine: ``pyarrow.fs``, configured by the
AWS environment variables alone. A session's jars and its Python workers' environment are fixed when
it starts, so each job runs in its own process (``jobs/ingest.py``) instead of the shared test session.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cluster import JAR_DIR, JARS, s3a_spark_conf

REPO = Path(__file__).resolve().parents[1]
LINE = '10.1.{i}.9 - user_{i} [10/Oct/2026:23:30:00 -0500] "GET /login_success HTTP/1.1" 200 476 "-" "UA"'


@pytest.fixture
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (a free port), stopped after the test."""
    server_mod = pytest.importorskip("moto.server", reason="pip install 'moto[server]' for the S3 test")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _buckets(s3_endpoint):
    """Buckets ``logs`` (3 good lines and a bad one in a.log, one good line in b.log.gz) and ``lake``."""
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=s3_endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
    )
    for bucket in ("logs", "lake"):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket="logs", Key="web/a.log", Body="\n".join(LINE.format(i=i) for i in range(3)) + "\nbad\n")
    s3.put_object(Bucket="logs", Key="web/b.log.gz", Body=gzip.compress(LINE.format(i=7).encode() + b"\n"))
    return s3


def _check_outputs(s3, summary):
    assert (summary["lines_read"], summary["kept"], summary["quarantined"]) == (5, 4, 1)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lake")["Contents"]]
    assert any(k.startswith("events/dt=2026-10-11/") and k.endswith(".parquet") for k in keys), keys
    assert any(k.startswith("events_quarantine/run_id=t1/") for k in keys), keys
    stored = json.loads(s3.get_object(Bucket="lake", Key="events_summaries/t1.json")["Body"].read())
    assert stored["kept_by_day"] == {"2026-10-11": 4}
    assert not [k for k in keys if "/.spark-staging" in k or "_temporary" in k or "_staging/run_id" in k]


@pytest.mark.slow
@pytest.mark.spark
def test_ingest_reads_and_writes_s3_with_pyarrow(s3_endpoint, tmp_path):
    """engine=arrow: the driver and every Python task reach S3 through pyarrow.fs (no jars)."""
    s3 = _buckets(s3_endpoint)
    cmd = [sys.executable, str(REPO / "jobs/ingest.py"), "--config", str(REPO / "conf/ingest.yml")]
    cmd += ["--master", "local[2]", "--spark-conf", "spark.ui.enabled=false", "--engine=arrow"]
    cmd += ["--inputs=s3a://logs/web/*", "--output=s3://lake/events", "--run_id=t1", "--max_bad_ratio=0.5"]
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["engine"] == "arrow"
    _check_outputs(s3, summary)


@pytest.mark.slow
@pytest.mark.spark
def test_ingest_reads_and_writes_s3(s3_endpoint, tmp_path):
    """engine=spark (auto picks it for S3): Hadoop's S3A connector reads and writes."""
    if not all(j.exists() for j in JARS):
        pytest.skip(f"S3A jars not in {JAR_DIR}: run scripts/fetch_s3a_jars.sh")
    s3 = _buckets(s3_endpoint)

    conf = [f"{k}={v}" for k, v in {**s3a_spark_conf(s3_endpoint), "spark.sql.shuffle.partitions": "2"}.items()]
    cmd = [
        sys.executable,
        str(REPO / "jobs/ingest.py"),
        "--config",
        str(REPO / "conf/ingest.yml"),
        "--master",
        "local[2]",
    ]
    cmd += [a for c in conf for a in ("--spark-conf", c)]
    # s3:// (not s3a://) on purpose: with no fs.s3.impl, io.resolve_uri maps it to S3A.
    cmd += ["--inputs=s3://logs/web/*", "--output=s3://lake/events", "--run_id=t1", "--max_bad_ratio=0.5"]
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["engine"] == "spark"
    _check_outputs(s3, summary)


def test_leases_on_s3_are_conditional_writes(s3_endpoint, monkeypatch):
    """The S3 lease store against a real S3 API (moto's server honours If-None-Match and If-Match): one
    create wins, a stale ETag swaps or deletes nothing, and a whole lease cycle runs (busy, expiry on the
    store's clock, takeover, fencing, giving back)."""
    from ipinsights.core.config import LeaseOptions
    from ipinsights.storage.lease import (
        LeaseBusyError,
        LeaseLostError,
        Leases,
        ShiftedClock,
        lease_store,
        lease_uri,
        set_clock,
    )

    for k, v in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    _buckets(s3_endpoint)
    uri = "s3://lake/_leases/events/dt=2026-10-11.lease"
    store = lease_store(uri)
    first = store.create(uri, {"owner": "a", "write": "1"})
    assert first and store.create(uri, {"owner": "b", "write": "2"}) is None
    second = store.swap(uri, first, {"owner": "a", "write": "3"})
    assert second and store.swap(uri, first, {"owner": "b", "write": "4"}) is None
    assert store.swap(uri, first, None) is None and store.read(uri).data["write"] == "3"
    assert abs(store.now(uri) - store.read(uri).mtime) < 60  # the store's clock, from its Date header
    assert store.swap(uri, second, None) == "" and store.read(uri) is None

    target = "s3://lake/events/dt=2026-10-11"
    assert lease_uri(target) == uri
    options = LeaseOptions(on_busy="fail", ttl_seconds=30.0)
    holder = Leases("holder", options)
    holder.acquire([target])
    holder._stop.set()  # its heartbeat stops (as its process would)
    with pytest.raises(LeaseBusyError, match="run holder"):
        Leases("next", options).acquire([target])
    clock = ShiftedClock(offset=300.0)
    old = set_clock(clock)
    try:
        taker = Leases("next", options)
        taker.acquire([target])
    finally:
        set_clock(old)
    assert taker.taken_over[target]["run_id"] == "holder"
    with pytest.raises(LeaseLostError):
        holder.renew()
    taker.release()
    assert store.read(uri) is None
