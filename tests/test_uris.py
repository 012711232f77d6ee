"""Every path a URI: train, tune and score jobs with their outputs on S3 (moto's server on loopback).

The Python side reaches S3 through ``pyarrow.fs`` (AWS environment variables, ``AWS_ENDPOINT_URL``);
the Spark side through Hadoop's S3A connector, whose jars come from ``scripts/fetch_s3a_jars.sh``
(see ``tests/test_s3.py``). A job's Python workers get their environment when its session starts, so
the jobs that reach S3 from executors run in their own processes, in an empty working directory that
must stay empty: a URI taken for a local path would leave ``./s3:/...`` there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from cluster import JAR_DIR, JARS, s3a_spark_conf

from ipinsights.core.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
HP = ["--num_entity_vectors=300", "--vector_dim=16", "--mini_batch_size=256", "--learning_rate=0.01"]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server for this module, the AWS environment pointing at it, and a boto3 client.

    Module-wide: pyarrow keeps one S3 filesystem per bucket for the process (``filesystems._s3_filesystem``).
    """
    server_mod = pytest.importorskip("moto.server", reason="pip install 'moto[server]' for the S3 tests")
    import boto3

    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.endpoint = endpoint  # type: ignore[attr-defined]
        yield client
    server.stop()


def _bucket(s3, name: str) -> str:
    s3.create_bucket(Bucket=name)
    return name


def _keys(s3, bucket: str, prefix: str = "") -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    # keys ending in "/" are folder markers pyarrow leaves when it deletes a folder's last file
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/"))


def _s3a_conf(endpoint: str) -> list[str]:
    """Spark settings for S3A against moto (as tests/test_s3.py explains, for hadoop-aws 3.3.1 on Hadoop 3.5)."""
    conf = [f"{k}={v}" for k, v in {**s3a_spark_conf(endpoint), "spark.sql.shuffle.partitions": "2"}.items()]
    return [a for c in conf for a in ("--spark-conf", c)]


def _run_job(job: str, args: list[str], cwd: Path, timeout: int = 1200) -> subprocess.CompletedProcess:
    """``jobs/<job>.py`` in its own process (env: this process's, the AWS settings included), in ``cwd``."""
    cmd = [sys.executable, str(REPO / "jobs" / f"{job}.py"), "--master", "local[2]", *args]
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def _need_jars():
    if not all(j.exists() for j in JARS):
        pytest.skip(f"S3A jars not in {JAR_DIR}: run scripts/fetch_s3a_jars.sh")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Headerless entity,ip CSVs (train, validation) of a small toy world."""
    from toyworld import make_toy_world

    d = tmp_path_factory.mktemp("pairs")
    w = make_toy_world(n_entities=150, events_per_entity=40, n_test=200, seed=3)
    for name in ("train", "validation"):
        pacsv.write_csv(getattr(w, name), d / f"{name}.csv", pacsv.WriteOptions(include_header=False))
    return d


# ---- the storage layer ------------------------------------------------------------------------------


def test_a_uri_never_becomes_a_local_path(tmp_path, monkeypatch):
    """``Path("s3://b/run")`` is ``s3:/b/run``: every local write refuses it instead of creating ``./s3:``."""
    from ipinsights.storage.files import atomic_write, join_uri, write_bytes
    from ipinsights.storage.modelfile import calibration_uri, profile_uri

    monkeypatch.chdir(tmp_path)
    for mangled in (Path("s3://bkt/run/x.json"), "s3:/bkt/run/x.json", Path("hdfs://nn/run") / "model"):
        with pytest.raises(ValueError, match="a URI turned into a local path"), atomic_write(mangled) as fh:
            fh.write("never")
        with pytest.raises(ValueError, match="a URI turned into a local path"):
            write_bytes(mangled, b"never")
    assert list(tmp_path.iterdir()) == []
    assert join_uri("s3://bkt/run/", "model", "model.json") == "s3://bkt/run/model/model.json"
    assert join_uri("file:///tmp/run", "model") == "file:///tmp/run/model"
    assert calibration_uri("s3://bkt/m/") == "s3://bkt/m.calibration.json"
    assert profile_uri("models/m") == "models/m.profile.safetensors"


def test_unreachable_locations_are_config_errors_naming_them(s3, tmp_path, monkeypatch):
    from ipinsights.storage.filesystems import check_reachable

    _bucket(s3, "uris-reach")
    check_reachable("s3://uris-reach/run")  # exists: fine
    check_reachable(str(tmp_path / "new" / "run"))  # a local folder yet to be made: fine
    with pytest.raises(ConfigError, match=r"foo://x/run"):
        check_reachable("foo://x/run")
    with pytest.raises(ConfigError, match=r"s3://uris-nobucket/run.*bucket 'uris-nobucket' does not exist"):
        check_reachable("s3://uris-nobucket/run")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a writable directory"):
        check_reachable(str(tmp_path / "file" / "run"))
    # an endpoint that does not answer (nothing listens on the port: it was just freed)
    from servers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(ConfigError, match=r"s3://uris-deadendpoint/run: the filesystem cannot be reached"):
        check_reachable("s3://uris-deadendpoint/run")


def test_models_load_from_s3_through_a_bounded_cache(s3, tmp_path, monkeypatch):
    """A model saved to S3 (manifest last) loads through a local copy keyed by its manifest: the same
    model is downloaded once, a replaced one is fetched anew, and the cache keeps a few models only."""
    import torch

    from ipinsights.core.config import Hyperparameters, ModelOptions
    from ipinsights.core.model import IPInsightsModel
    from ipinsights.storage import files
    from ipinsights.storage.modelfile import MODEL_CACHE_ENTRIES, ModelFileError, load_model, save_model

    monkeypatch.setenv("IPINSIGHTS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    bucket = _bucket(s3, "uris-models")
    hp = Hyperparameters(num_entity_vectors=50, vector_dim=8)

    def model(seed: int) -> IPInsightsModel:
        torch.manual_seed(seed)
        return IPInsightsModel(hp, ModelOptions(ip_hash_buckets=64))

    first = model(1)
    save_model(first, f"s3://{bucket}/m", extra_files={"note.txt": b"one"})
    assert _keys(s3, bucket) == ["m/model.json", "m/note.txt", "m/weights.safetensors"]
    a = load_model(f"s3://{bucket}/m")
    assert a.uri == f"s3://{bucket}/m" and a.path.is_relative_to(tmp_path / "cache")
    assert torch.equal(a.model.entity_table, first.entity_table)
    assert load_model(f"s3://{bucket}/m").path == a.path  # the same model: no second download
    second = model(2)
    save_model(second, f"s3://{bucket}/m")  # replaced: the stale extra file goes too
    assert _keys(s3, bucket) == ["m/model.json", "m/weights.safetensors"]
    b = load_model(f"s3://{bucket}/m")
    assert b.path != a.path and torch.equal(b.model.entity_table, second.entity_table)
    for seed in range(3, 3 + MODEL_CACHE_ENTRIES + 2):
        save_model(model(seed), f"s3://{bucket}/m")
        load_model(f"s3://{bucket}/m")
    entries = [p for p in (tmp_path / "cache" / "models").iterdir() if not p.name.startswith(".")]
    assert len(entries) == MODEL_CACHE_ENTRIES

    # A replacement that fails half way leaves no model (no manifest), never a mix of two models.
    real_upload = files._upload

    def fail_on_weights(local, uri):
        if uri.endswith("weights.safetensors"):
            raise OSError("connection reset")
        real_upload(local, uri)

    monkeypatch.setattr(files, "_upload", fail_on_weights)
    with pytest.raises(OSError, match="connection reset"):
        save_model(model(99), f"s3://{bucket}/m")
    with pytest.raises(ModelFileError, match=rf"s3://{bucket}/m/model.json: missing"):
        load_model(f"s3://{bucket}/m")
    assert list(tmp_path.iterdir()) == [tmp_path / "cache"]


# ---- the jobs -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.timeout(2700)
def test_train_job_writes_the_run_to_s3(s3, pairs, tmp_path):
    """--output s3://...: model, metrics, config, checkpoints and work files land in the bucket and nothing
    under the working directory (resuming from the bucket's checkpoint: tests/test_cluster.py)."""
    _need_jars()
    bucket = _bucket(s3, "uris-train")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = [
        "--train-csv",
        str(pairs / "train.csv"),
        "--validation-csv",
        str(pairs / "validation.csv"),
        "--output",
        f"s3://{bucket}/run",
        "--backend",
        "local",
        "--num-workers",
        "1",
        *HP,
        *_s3a_conf(s3.endpoint),
    ]
    proc = _run_job("train", [*args, "--epochs=1", "--config", str(REPO / "conf" / "demo.yml")], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = _keys(s3, bucket)
    for key in (
        "run/config.json",
        "run/metrics.jsonl",
        "run/model/model.json",
        "run/model/weights.safetensors",
        "run/checkpoints/latest.json",
        "run/work/entities.safetensors",
    ):
        assert key in keys, keys
    assert any(k.startswith("run/work/train/bucket=") for k in keys), keys
    assert list(cwd.iterdir()) == []
    latest = json.loads(s3.get_object(Bucket=bucket, Key="run/checkpoints/latest.json")["Body"].read())
    assert latest["epoch"] == 1 and f"run/checkpoints/{latest['file']}" in keys
    assert json.loads(proc.stdout.splitlines()[-1])["model"] == f"s3://{bucket}/run/model"

    from ipinsights.score.scorer import Scorer

    scorer = Scorer.load(f"s3://{bucket}/run/model")  # the Scorer takes the URI
    assert [e["epoch"] for e in scorer.manifest["training"]["epochs"]] == [1]


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.timeout(1500)
def test_score_job_reads_the_model_from_s3_and_writes_sidecars_and_reports_there(s3, tmp_path):
    from servers import train_toy_model
    from toyworld import make_toy_world

    bucket = _bucket(s3, "uris-score")
    model = f"s3://{bucket}/models/m"
    train_toy_model(model)  # trained here, saved straight to the bucket
    # The toy model's world, as an events table: two training days, a calibration day, a day to score.
    w = make_toy_world(n_entities=100, events_per_entity=60, n_test=200, seed=0)
    days = np.array(["2026-05-01", "2026-05-02"], dtype=object)[np.arange(w.train.num_rows) % 2]
    test = w.test.select(["entity", "ip"])
    parts = [
        w.train.append_column("dt", pa.array(days, pa.string())),
        w.validation.append_column("dt", pa.array(["2026-05-03"] * w.validation.num_rows, pa.string())),
        test.append_column("dt", pa.array(["2026-05-04"] * test.num_rows, pa.string())),
    ]
    events = pa.concat_tables(parts)
    events = events.append_column("ts", pa.array(np.full(events.num_rows, 1_778_000_000_000_000), pa.timestamp("us")))
    pq.write_to_dataset(events, tmp_path / "events", partition_cols=["dt"])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = _run_job(
        "score",
        [
            "--date",
            "2026-05-04",
            "--target-fpr",
            "0.05",
            f"--model={model}",
            f"--events={tmp_path / 'events'}",
            f"--scores={tmp_path / 'scores'}",
            f"--flagged={tmp_path / 'flagged'}",
            f"--reports=s3://{bucket}/reports",
            "--calibration_start_date=2026-05-03",
            "--calibration_end_date=2026-05-03",
            "--train_start_date=2026-05-01",
            "--train_end_date=2026-05-02",
            "--spark-conf",
            "spark.ui.enabled=false",
        ],
        cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = _keys(s3, bucket)
    for key in (
        "models/m.calibration.json",
        "models/m.profile.safetensors",
        "reports/dt=2026-05-04/report.html",
        "reports/dt=2026-05-04/flagged.csv",
    ):
        assert key in keys, keys
    assert f"s3://{bucket}/reports/dt=2026-05-04/report.html" in proc.stdout
    assert list(cwd.iterdir()) == []
    # the endpoint's loader finds the profile beside the model in the bucket
    from ipinsights.score.scorer import Scorer

    assert Scorer.load(model, profile=True).profiles is not None


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.timeout(2700)
def test_tune_job_writes_its_results_to_s3(s3, pairs, tmp_path):
    _need_jars()
    bucket = _bucket(s3, "uris-tune")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "train.yml").write_text(
        "hyperparameters: {num_entity_vectors: 300, vector_dim: 16, epochs: 1, learning_rate: 0.01,"
        " mini_batch_size: 500}\nmodel: {ip_hash_buckets: 4096}\n"
    )
    tune = {
        "base_config": "train.yml",
        "max_jobs": 2,
        "max_parallel_jobs": 1,
        "strategy": "random",
        "seed": 1,
        "threads_per_trial": 1,
        "space": {"learning_rate": {"type": "continuous", "min": 0.005, "max": 0.05}},
    }
    (conf / "tune.yml").write_text(json.dumps(tune))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = _run_job(
        "tune",
        [
            "--train",
            str(pairs / "train.csv"),
            "--validation",
            str(pairs / "validation.csv"),
            "--config",
            str(conf / "tune.yml"),
            "--output",
            f"s3://{bucket}/tune",
            *_s3a_conf(s3.endpoint),
        ],
        cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = _keys(s3, bucket)
    for key in (
        "tune/results.csv",
        "tune/results.parquet",
        "tune/best.json",
        "tune/tuning_config.json",
        "tune/best_model/model.json",
        "tune/best_model/weights.safetensors",
    ):
        assert key in keys, keys
    assert any(k.startswith("tune/trials/trial-000/") for k in keys), keys
    best = json.loads(s3.get_object(Bucket=bucket, Key="tune/best.json")["Body"].read())
    assert best["model"] == f"s3://{bucket}/tune/best_model"
    assert list(cwd.iterdir()) == []


@pytest.mark.spark
def test_unreachable_output_fails_before_any_work(spark, s3, tmp_path, monkeypatch, capsys):
    """The output is checked first: the error names it, although the input does not exist either."""
    from ipinsights_jobs import train

    monkeypatch.chdir(tmp_path)
    missing_input = str(tmp_path / "no-such.csv")
    for output, message in (
        ("foo://x/run", "foo://x/run"),
        ("s3://uris-missing/run", "bucket 'uris-missing' does not exist"),
    ):
        assert train.main(["--train-csv", missing_input, "--output", output, "--backend", "local", *HP]) == 2
        assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
