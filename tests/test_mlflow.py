"""MLflow as its users expect it: where a tracking server is configured the training job logs its params,
per-epoch metrics and a ``pyfunc`` model that scores as the :class:`Scorer` does, registered under the
configured name; with none configured nothing is logged and mlflow is not even imported.

Every store here is a local sqlite database with its artifacts in the test's folder.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from toyworld import make_toy_world

from ipinsights._version import __version__
from ipinsights.core.config import ConfigError, Hyperparameters, ModelOptions, TrainConfig, TrainOptions, load_config
from ipinsights.core.entities import EntityStats
from ipinsights.score.scorer import Scorer
from ipinsights.serve.mlflow_run import TrackingError, tracking_of, training_run
from ipinsights.storage.modelfile import save_model
from ipinsights.train.data import encode_pairs
from ipinsights.train.trainer import build_model, train_model

mlflow = pytest.importorskip("mlflow")  # the dev extra installs it (mlflow-skinny)
# MLflow's sqlite store, not ours, uses a loader strategy SQLAlchemy 2.1 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

ROOT = Path(__file__).resolve().parents[1]
HP = Hyperparameters(num_entity_vectors=64, vector_dim=8, epochs=2, mini_batch_size=200)
OPTS = ModelOptions(ip_hash_buckets=256, ipv6_hash_buckets=64)


@pytest.fixture(scope="module")
def world():
    return make_toy_world(n_entities=40, events_per_entity=20, n_test=200, ipv6_share=0.2)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite tracking and registry store for the module (creating its tables takes seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root / 'mlflow.db'}", root / "artifacts"


@pytest.fixture
def tracking(store, request, monkeypatch):
    """The store as the tracking server, an experiment of the test's own (artifacts beside the store);
    the process's tracking URI (MLflow's global, and its variable) unset afterwards."""
    uri, artifacts = store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    experiment = f"ipinsights-{request.node.name}"
    client = mlflow.MlflowClient(uri)
    client.create_experiment(experiment, artifact_location=(artifacts / experiment).as_uri())
    yield uri, experiment, client
    mlflow.set_tracking_uri(None)


def _cfg(settings: dict[str, str]) -> TrainConfig:
    """A training config of the dataclass defaults (a tiny model) and ``settings``."""
    return load_config(TrainConfig, None, {"num_entity_vectors": "64", "vector_dim": "8", **settings})


def _queries(world) -> pd.DataFrame:
    """The toy world's test pairs and the awkward ones: an invalid address, an unseen entity, IPv6."""
    extra = pd.DataFrame(
        {"entity": ["user_1", "nobody-seen", "user_2"], "ip": ["not-an-ip", "10.1.2.3", "2001:db8::7"]}
    )
    return pd.concat([world.test.to_pandas()[["entity", "ip"]], extra], ignore_index=True)


def _train_tiny(world, model_dir: Path) -> str:
    train = world.train.to_pandas()
    pairs = encode_pairs(train["entity"], train["ip"], HP.num_entity_vectors, OPTS.hash_seed, "toy")
    stats = EntityStats.from_entities(train["entity"], OPTS.hash_seed)
    train_model(HP, OPTS, TrainOptions(progress_bar="off"), pairs, model_dir=model_dir, entity_stats=stats)
    return str(model_dir)


def _same_scores(got: pd.DataFrame, model_dir: str, queries: pd.DataFrame) -> None:
    expected = Scorer.load(model_dir).dot_product(queries["entity"], queries["ip"])
    assert list(got.columns) == ["dot_product"]
    assert np.isnan(expected).sum() >= 1  # the invalid address is in the queries
    np.testing.assert_array_equal(got["dot_product"].to_numpy(), expected)  # NaN where NaN


def test_the_pyfunc_scores_as_the_scorer_by_run_and_by_registered_name(world, tracking, tmp_path):
    from ipinsights.serve.mlflow_pyfunc import SIGNATURE, log_scorer_model

    uri, experiment, client = tracking
    model_dir = _train_tiny(world, tmp_path / "model")
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=client.get_experiment_by_name(experiment).experiment_id) as run:
        info = log_scorer_model(model_dir, registered_model_name="ipinsights-pyfunc")
    assert info.registered_model_version == 1
    queries = _queries(world)
    for model_uri in ("models:/ipinsights-pyfunc/1", f"runs:/{run.info.run_id}/model"):
        _same_scores(mlflow.pyfunc.load_model(model_uri).predict(queries), model_dir, queries)
    # What the logged model holds: our model files and a code file, a signature, an example, our package.
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model", dst_path=str(tmp_path / "dl")))
    assert sorted(p.name for p in (local / "artifacts" / "model").iterdir()) == [
        "entities.safetensors",
        "model.json",
        "weights.safetensors",
    ]
    assert not list(local.rglob("*.pkl"))  # nothing pickled: the class comes from the installed package
    assert f"ipinsights=={__version__}" in (local / "requirements.txt").read_text().splitlines()
    logged = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    assert logged.signature == SIGNATURE
    example = json.loads((local / "input_example.json").read_text())
    assert example["columns"] == ["entity", "ip"]
    # Columns named otherwise are refused with MLflow's message, before the model sees them.
    with pytest.raises(mlflow.exceptions.MlflowException, match="missing inputs"):
        mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"user": ["a"], "address": ["1.2.3.4"]}))


def test_a_model_trained_with_an_ip2asn_table_carries_it(world, tracking, tmp_path):
    from ipinsights.serve.mlflow_pyfunc import log_scorer_model

    uri, experiment, client = tracking
    table = tmp_path / "ip2asn.tsv"
    table.write_text("10.0.0.0\t10.255.255.255\t64500\tUS\tEXAMPLE-NET\n1.0.0.0\t1.0.0.255\t64501\tAU\tOTHER\n")
    opts = ModelOptions(asn_table=str(table), ip_hash_buckets=64, ipv6_hash_buckets=64, asn_hash_buckets=64)
    model_dir = str(save_model(build_model(HP, opts, seed=0), tmp_path / "model"))
    queries = _queries(world)
    expected = Scorer.load(model_dir).dot_product(queries["entity"], queries["ip"])
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=client.get_experiment_by_name(experiment).experiment_id) as run:
        log_scorer_model(model_dir)
    table.unlink()  # the model scores only with its table: the logged one brings its own copy
    got = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").predict(queries)
    np.testing.assert_array_equal(got["dot_product"].to_numpy(), expected)


def test_what_turns_logging_on():
    cfg = load_config(TrainConfig, ROOT / "conf" / "train.yml")
    assert tracking_of(cfg, {}) is None  # the shipped defaults, no server: off
    on = tracking_of(cfg, {"MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    assert on is not None and not on.explicit and on.tracking_uri is None  # MLflow reads the variable itself
    databricks = tracking_of(cfg, {"DATABRICKS_RUNTIME_VERSION": "16.4"})
    assert databricks is not None and databricks.tracking_uri == "databricks"
    setting = load_config(TrainConfig, ROOT / "conf" / "train.yml", ["--mlflow.tracking_uri=sqlite:///x.db"])
    explicit = tracking_of(setting, {"MLFLOW_TRACKING_URI": "http://elsewhere"})
    assert explicit is not None and explicit.explicit and explicit.tracking_uri == "sqlite:///x.db"  # the setting wins
    off = _cfg({"mlflow.enabled": "false"})
    assert tracking_of(off, {"DATABRICKS_RUNTIME_VERSION": "16.4"}) is None
    forced = _cfg({"mlflow.enabled": "true"})
    assert (t := tracking_of(forced, {})) is not None and t.explicit and t.tracking_uri is None
    with pytest.raises(ConfigError, match="enabled"):
        _cfg({"mlflow.enabled": "sometimes"})


def test_a_model_name_without_a_server_is_pointed_out(caplog):
    named = _cfg({"mlflow.registered_model_name": "ipinsights"})
    with caplog.at_level(logging.WARNING), training_run(named, "run", {}) as tracked:
        assert tracked is None
    assert "no tracking server configured" in caplog.text


def test_without_a_server_nothing_is_logged_and_mlflow_is_not_imported(tmp_path):
    """The training job's own modules and its MLflow run with the shipped settings and no server."""
    code = (
        "import sys\n"
        "from ipinsights_jobs import train\n"
        "from ipinsights.core.config import TrainConfig, load_config\n"
        f"cfg = load_config(TrainConfig, {str(ROOT / 'conf' / 'train.yml')!r})\n"
        "with train.training_run(cfg, 'run') as tracked:\n"
        "    assert tracked is None\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DATABRICKS_RUNTIME_VERSION")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no mlruns/


def test_a_missing_mlflow_is_an_error_when_asked_for_and_a_warning_when_implied(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an environment without mlflow imports
    asked = _cfg({"mlflow.tracking_uri": "http://m:5000"})
    missing = r"mlflow\.tracking_uri=http://m:5000.*not installed.*ipinsights\[mlflow\]"
    with pytest.raises(ConfigError, match=missing), training_run(asked, "run"):
        pass
    implied = _cfg({})
    with caplog.at_level(logging.WARNING), training_run(implied, "run", {"DATABRICKS_RUNTIME_VERSION": "16.4"}) as r:
        assert r is None
    assert "running on Databricks" in caplog.text and "not installed" in caplog.text


def test_a_failed_training_is_a_failed_run_and_a_refused_registration_an_error(tracking, tmp_path):
    uri, experiment, client = tracking
    cfg = _cfg({"epochs": "1", "mlflow.tracking_uri": uri, "mlflow.experiment": experiment})
    with pytest.raises(RuntimeError, match="diverged"), training_run(cfg, str(tmp_path / "run")) as tracked:
        assert tracked is not None
        raise RuntimeError("diverged")
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FAILED" and run.data.params["hyperparameters.epochs"] == "1"
    # A name the registry refuses: an error (the job exits 1 with it) naming the run and the model.
    model_dir = str(save_model(build_model(HP, OPTS, seed=0), tmp_path / "model"))
    bad = _cfg({"mlflow.tracking_uri": uri, "mlflow.experiment": experiment, "mlflow.registered_model_name": "a/b"})
    refused = r"logging the model at .*model failed"
    with pytest.raises(TrackingError, match=refused), training_run(bad, str(tmp_path / "run")) as tracked:
        assert tracked is not None
        tracked.log_trained(model_dir)


def _events_table(world, path: Path) -> None:
    """The toy world's training pairs as an events table: two training days and a validation day."""
    train = world.train
    days = np.array(["2024-01-01", "2024-01-02", "2024-01-03"])[np.arange(train.num_rows) % 3]
    table = pa.table({"entity": train["entity"], "ip": train["ip"], "dt": pa.array(days)})
    pq.write_to_dataset(table, path, partition_cols=["dt"])


@pytest.mark.spark
@pytest.mark.slow
def test_the_training_job_logs_params_metrics_and_a_registered_model(spark, world, tracking, tmp_path):
    from ipinsights_jobs import train

    uri, experiment, client = tracking
    events, run_dir = tmp_path / "events", tmp_path / "run"
    _events_table(world, events)
    settings = [
        "--epochs=2",
        "--vector_dim=8",
        "--num_entity_vectors=64",
        "--mini_batch_size=200",
        f"--mlflow.tracking_uri={uri}",
        f"--mlflow.experiment={experiment}",
        "--mlflow.registered_model_name=ipinsights-job",
    ]
    rc = train.main(["--events", str(events), "--date", "2024-01-04", "--output", str(run_dir), *settings])
    assert rc == 0
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["hyperparameters.epochs"] == "2" and run.data.params["schedule.train_days"] == "7"
    assert run.data.tags["ipinsights.output"] == str(run_dir) and run.info.run_name == "ipinsights-train-run"
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in loss] == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "discriminator_auc")) == 2  # validated on T-1
    (version,) = client.search_model_versions("name='ipinsights-job'")
    assert version.run_id == run.info.run_id
    queries = _queries(world)
    got = mlflow.pyfunc.load_model("models:/ipinsights-job/1").predict(queries)
    _same_scores(got, str(run_dir / "model"), queries)
