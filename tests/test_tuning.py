"""Hyperparameter tuning: config validation, the stopping rule, a reproducible trial sequence, a trial
that diverges, and a 6-trial, 2-parallel tuning job on local[2]."""

from __future__ import annotations

import concurrent.futures as cf
import json
import random
import time

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pytest

from ipinsights.core.config import ConfigError, TrainConfig, config_from_dict, load_config
from ipinsights.tune.config import (
    CPU_SPACE,
    DEFAULT_SPACE,
    SAGEMAKER_SPACE,
    TuneConfig,
    load_tune_config,
    without_parameters,
)
from ipinsights.tune.driver import COMPLETED, FAILED, run_trials
from ipinsights.tune.trials import PreparedData, median_running_average, trial_result

pytest.importorskip("optuna")

SMALL_SPACE = {
    "learning_rate": {"type": "continuous", "min": 0.003, "max": 0.1, "scaling": "logarithmic"},
    "vector_dim": {"type": "Integer", "min": 8, "max": 32, "scaling": "Auto"},
    "mini_batch_size": {"type": "categorical", "values": [200, 500]},
}


def _cfg(**kw) -> TuneConfig:
    return config_from_dict(TuneConfig, {"space": SMALL_SPACE, **kw})


def test_conf_tune_yml_is_the_cpu_space_and_sagemakers_is_named():
    cfg = load_tune_config("conf/tune.yml")
    assert cfg.space == DEFAULT_SPACE == CPU_SPACE and cfg.metric == "shuffled_auc"
    assert "num_entity_vectors" not in {r.name for r in cfg.ranges} and cfg.entity_vectors_per_entity == 2.0
    decay = {r.name: r for r in cfg.ranges}["weight_decay"]
    assert 0.0 in decay.values and max(decay.values) <= 1e-4  # zero can be drawn, a collapsing decay cannot
    sagemaker = load_tune_config("conf/tune.yml", ["--space=sagemaker"])
    assert sagemaker.ranges == SAGEMAKER_SPACE
    assert {r.name: (r.min, r.max) for r in sagemaker.ranges}["learning_rate"] == (1e-4, 0.1)
    assert cfg.base_config == "conf/demo.yml"  # relative to the tuning config's folder
    load_config(TrainConfig, cfg.base_config)
    with pytest.raises(ConfigError, match="objective='validation:recall'"):
        _cfg(objective="validation:recall")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_job": 3}, "unknown setting(s) max_job"),
        (
            {"space": {"learning_rate": {"type": "continuous", "min": 1e-4, "max": 0.1, "step": 2}}},
            "unknown setting(s) space.learning_rate.step",
        ),
        (
            {"space": {"learning_rate": {"type": "continuous", "min": 1e-4, "max": 50}}},
            "space.learning_rate: max 50.0 is not a valid value: learning_rate=50.0 is out of range",
        ),
        ({"space": {"vector_dim": {"type": "integer", "min": 2, "max": 64}}}, "vector_dim=2 is out of range"),
        ({"space": {"epochs": {"type": "continuous", "min": 1, "max": 3}}}, "integer hyperparameter"),
        (
            {"space": {"weight_decay": {"type": "continuous", "min": 0.0, "max": 1.0, "scaling": "logarithmic"}}},
            "logarithmic scaling needs min > 0",
        ),
        ({"space": {"nonsense": {"type": "integer", "min": 1, "max": 2}}}, "not a hyperparameter"),
        ({"space": {"epochs": {"type": "integer", "min": 5, "max": 2}}}, "greater than max"),
        ({"strategy": "grid"}, "must be bayesian or random"),
        ({"max_parallel_jobs": 0}, "max_parallel_jobs=0 is out of range"),
    ],
)
def test_config_errors_name_the_setting(data, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(TuneConfig, data)
    assert message in str(err.value)


def test_sagemaker_spellings_and_auto_scaling():
    cfg = _cfg(strategy="Random")
    ranges = {r.name: r for r in cfg.space}
    assert cfg.strategy == "random"
    assert ranges["vector_dim"].type == "integer" and ranges["vector_dim"].scaling == "linear"  # 8..32: < 100x
    assert ranges["mini_batch_size"].values == (200, 500)
    wide = config_from_dict(TuneConfig, {"space": {"mini_batch_size": {"type": "integer", "min": 100, "max": 50000}}})
    assert wide.space[0].scaling == "logarithmic"
    assert [r.name for r in without_parameters(cfg, ["vector_dim"]).space] == ["learning_rate", "mini_batch_size"]
    with pytest.raises(ConfigError, match="nothing left to tune"):
        without_parameters(cfg, list(SMALL_SPACE))


def test_median_running_average():
    curves = [[0.6, 0.8], [0.7, 0.9, 0.95], [0.5]]
    # epoch 1: medians of 0.6, 0.7, 0.5; epoch 2: of running means 0.7, 0.8; epoch 3: one curve only
    assert median_running_average(curves, 2) == pytest.approx([0.6, 0.75, None])
    assert median_running_average(curves, 3) == pytest.approx([0.6, None, None])
    assert median_running_average([], 1) == []


def _fake_submit(pool: cf.ThreadPoolExecutor, seen: list):
    """Trials that finish in a random order, with an AUC that is a smooth function of the values."""

    def run(spec):
        time.sleep(random.random() * 0.02)
        hp = spec.hyperparameters
        auc = 0.9 - 0.05 * abs(np.log10(hp["learning_rate"]) + 1.5) - 0.001 * abs(hp["vector_dim"] - 20)
        return trial_result(spec.number, COMPLETED, [{"epoch": 1, "loss": 0.5, "discriminator_auc": auc}], seconds=0.01)

    def submit(spec):
        seen.append(spec)
        return pool.submit(run, spec)

    return submit


def _params(strategy: str, seed: int, tmp_path) -> list[dict]:
    overrides = ["--vector_dim=16", "--learning_rate=0.01", "--mini_batch_size=500"]
    base = load_config(TrainConfig, "conf/demo.yml", overrides)
    cfg = _cfg(strategy=strategy, seed=seed, max_jobs=12, max_parallel_jobs=3, baseline_trial=True)
    seen: list = []
    with cf.ThreadPoolExecutor(3) as pool:
        records = run_trials(cfg, base, PreparedData([], []), tmp_path / "trials", _fake_submit(pool, seen))
    assert [r.number for r in records] == list(range(12)) and all(r.status == COMPLETED for r in records)
    assert [s.number for s in seen] == list(range(12))
    return [r.params for r in records]


@pytest.mark.parametrize("strategy", ["bayesian", "random"])
def test_same_seed_same_trial_sequence(strategy, tmp_path):
    first = _params(strategy, 7, tmp_path)
    assert first == _params(strategy, 7, tmp_path)  # finishing order differs between runs; the sequence does not
    assert first[0] == {"learning_rate": 0.01, "vector_dim": 16, "mini_batch_size": 500}  # the baseline trial
    assert first != _params(strategy, 8, tmp_path)
    assert len({tuple(p.values()) for p in first}) > 8


def test_invalid_combination_fails_without_launching(tmp_path):
    base = load_config(TrainConfig, "conf/demo.yml")
    space = {
        "random_negative_sampling_rate": {"type": "categorical", "values": [0]},
        "shuffled_negative_sampling_rate": {"type": "categorical", "values": [0]},
    }
    cfg = config_from_dict(TuneConfig, {"space": space, "max_jobs": 2, "strategy": "random"})
    launched: list = []
    records = run_trials(cfg, base, PreparedData([], []), tmp_path, launched.append)
    assert not launched
    assert [r.status for r in records] == [FAILED, FAILED]
    assert "random_negative_sampling_rate + shuffled_negative_sampling_rate" in records[0].error


# ---------------------------------------------------------------------------------------------
# The real thing: 6 trials, 2 in parallel, on local[2]
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from toyworld import make_toy_world

    d = tmp_path_factory.mktemp("tune_data")
    w = make_toy_world(n_entities=150, events_per_entity=60, n_test=1000, seed=2)
    opt = pacsv.WriteOptions(include_header=False)
    for name in ("train", "validation", "test"):
        pacsv.write_csv(getattr(w, name), d / f"{name}.csv", opt)
    return d, w


@pytest.mark.slow
@pytest.mark.spark
def test_tuning_job_on_spark(spark, toy, tmp_path, capsys, caplog):
    from ipinsights.score.evaluate import evaluate_scores
    from ipinsights.score.scorer import Scorer
    from ipinsights_jobs import cli

    data, world = toy
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "train.yml").write_text(
        "hyperparameters: {num_entity_vectors: 300, vector_dim: 16, epochs: 2, learning_rate: 0.01,"
        " mini_batch_size: 500}\nmodel: {ip_hash_buckets: 4096}\n"
    )
    tune_yml = {
        "base_config": "train.yml",
        "max_jobs": 6,
        "max_parallel_jobs": 2,
        "strategy": "bayesian",
        "seed": 1,
        "startup_trials": 3,
        "baseline_trial": True,
        "threads_per_trial": 1,
        "early_stopping": {"type": "auto", "min_trials": 2},
        "space": SMALL_SPACE,
        "objective": "validation:labelled_recall",  # labelled validation rows: per-kind recall at 1% FPR
    }
    (conf / "tune.yml").write_text(json.dumps(tune_yml))  # JSON is YAML
    out = tmp_path / "out"
    t0 = time.perf_counter()
    with caplog.at_level("INFO", logger="ipinsights.tune.driver"):
        rc = cli.main(
            [
                "tune",
                "--train",
                str(data / "train.csv"),
                "--validation",
                str(data / "validation.csv"),
                "--validation-labelled",
                str(data / "test.csv"),
                "--config",
                str(conf / "tune.yml"),
                "--output",
                str(out),
            ]
        )
    elapsed = time.perf_counter() - t0
    assert rc == 0
    printed = capsys.readouterr().out
    assert "TrainingJobStatus" in printed and "FinalObjectiveValue" in printed

    table = pd.read_csv(out / "results.csv")
    parquet = pd.read_parquet(out / "results.parquet")
    assert list(parquet["TrainingJobStatus"]) == list(table["TrainingJobStatus"])
    assert list(table["TrialNumber"]) == list(range(6))
    assert {"learning_rate", "vector_dim", "mini_batch_size", "TrainingElapsedTimeSeconds"} <= set(table.columns)
    statuses = dict(zip(table["TrialNumber"], table["TrainingJobStatus"], strict=True))
    assert set(statuses.values()) <= {"Completed", "Stopped"}, table["FailureReason"]
    assert np.isfinite(table["FinalObjectiveValue"]).all()
    # Each trial's metrics side by side; the objective is the labelled recall.
    assert np.allclose(table["FinalObjectiveValue"], table["labelled_recall"])
    assert (table["discriminator_auc"] > 0.5).all() and (table["shuffled_auc"] > 0.5).all()
    # trial 0 is the base config's own values (the baseline)
    assert table.loc[0, "learning_rate"] == pytest.approx(0.01) and table.loc[0, "vector_dim"] == 16

    best = json.loads((out / "best.json").read_text())
    assert best["objective"]["value"] == pytest.approx(table["FinalObjectiveValue"].max())
    assert table.loc[best["trial"], "FinalObjectiveValue"] == pytest.approx(table["FinalObjectiveValue"].max())
    assert json.loads((out / "tuning_config.json").read_text())["tuning"]["max_jobs"] == 6

    # Trials ran side by side: the second trial's Spark job was submitted before the first one ended
    # (read from the order of the driver's own log lines, not from clocks or a polling thread).
    events = [r.getMessage().split(":")[0] for r in caplog.records if r.name == "ipinsights.tune.driver"]
    ends = [e for e in events if e.startswith("trial 0 ") and not e.endswith("launched")]
    assert events.index("trial 1 launched") < events.index(ends[0]), events

    # The best model is a normal model directory: it loads and scores.
    scorer = Scorer.load(out / "best_model")
    assert scorer.manifest["hyperparameters"]["vector_dim"] == best["hyperparameters"]["vector_dim"]
    scores = scorer.anomaly_score(world.test["entity"], world.test["ip"])
    assert np.isfinite(scores).all()
    ev = evaluate_scores(scores, world.test["label"].to_numpy(), world.test["kind"].to_numpy(zero_copy_only=False))
    assert ev.auc["model"]["random_ip"] > 0.8
    # Only the best trial's model is kept (keep_trial_models: false); every trial that ran has its metrics.
    assert [p.parent.name for p in (out / "trials").glob("*/model")] == [f"trial-{best['trial']:03d}"]
    assert len(list((out / "trials").glob("*/metrics.jsonl"))) == 6
    print(f"6-trial tuning job: {elapsed:.1f} s")


@pytest.mark.slow
def test_diverging_trial_fails_and_the_job_goes_on(toy, tmp_path, monkeypatch):
    """A trial whose weights become NaN is Failed ("diverged"), with its metrics; the others still run.

    The trials run in this process (the local runner), so trial 1 can be made to diverge from the
    outside: its model starts from NaN weights, and the real divergence check catches it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ipinsights.core.hashing import hash_strings
    from ipinsights.core.ip import parse_ip
    from ipinsights.train import trainer
    from ipinsights.tune.trials import LocalTrialRunner

    _, world = toy
    base = load_config(
        TrainConfig,
        "conf/demo.yml",
        ["--num_entity_vectors=300", "--vector_dim=8", "--epochs=1", "--mini_batch_size=500"],
    )
    files = []
    for name in ("train", "validation"):  # the work files prepare_data writes: (entity_hash, ip)
        t = getattr(world, name)
        hashes = hash_strings(t["entity"], base.model.hash_seed).view(np.int64)
        pq.write_table(
            pa.table({"entity_hash": hashes, "ip": parse_ip(t["ip"]).value.astype(np.int64)}),
            tmp_path / f"{name}.parquet",
        )
        files.append(str(tmp_path / f"{name}.parquet"))
    data = PreparedData([files[0]], [files[1]])
    build_model = trainer.build_model

    def nan_model(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.entity_table.data.fill_(float("nan"))
        return model

    runner = LocalTrialRunner()

    def submit(spec):
        if spec.number != 1:
            return runner.submit(spec)
        with monkeypatch.context() as patch:
            patch.setattr(trainer, "build_model", nan_model)
            return runner.submit(spec)

    cfg = _cfg(max_jobs=3, max_parallel_jobs=1, strategy="random", threads_per_trial=1)
    records = run_trials(cfg, base, data, tmp_path / "trials", submit)
    assert [r.status for r in records] == [COMPLETED, FAILED, COMPLETED]
    failed = records[1]
    assert failed.error.startswith("DivergedError: diverged at epoch 1") and failed.objective is None
    assert failed.model_dir is None and not (tmp_path / "trials" / "trial-001" / "model").exists()
    assert [h["epoch"] for h in failed.history] == [1]  # the epoch it diverged in is recorded
    assert (tmp_path / "trials" / "trial-001" / "metrics.jsonl").exists()
    assert all(r.objective > 0.5 for r in records if r.status == COMPLETED)


def test_io_helpers(tmp_path):
    from ipinsights.storage.files import copy_tree_atomic, write_frame
    from ipinsights.storage.sagemaker_csv import _looks_like_csv

    frame = pd.DataFrame({"TrialNumber": [0, 1], "FinalObjectiveValue": [0.9, float("nan")], "x": ["a", ""]})
    write_frame(frame, tmp_path / "t.csv")
    write_frame(frame, tmp_path / "t.parquet")
    assert pd.read_parquet(tmp_path / "t.parquet").equals(frame)
    assert pd.read_csv(tmp_path / "t.csv", keep_default_na=False)["x"].tolist() == ["a", ""]
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        write_frame(frame, tmp_path / "t.json")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("1")
    copy_tree_atomic(src, tmp_path / "dst")
    (src / "sub" / "f").write_text("2")
    copy_tree_atomic(src, tmp_path / "dst")  # replaces the earlier copy
    assert (tmp_path / "dst" / "sub" / "f").read_text() == "2"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    table = tmp_path / "events" / "dt=2024-01-01"
    table.mkdir(parents=True)
    (table / "part-0.parquet").write_bytes(b"")
    assert not _looks_like_csv(str(tmp_path / "events"))
    assert _looks_like_csv(str(tmp_path / "t.csv")) and _looks_like_csv(str(src))


@pytest.mark.slow
@pytest.mark.spark
def test_every_trial_failing_fails_the_job(spark, toy, tmp_path):
    from ipinsights.storage.sagemaker_csv import read_pairs_table
    from ipinsights.tune.config import TuningError
    from ipinsights.tune.driver import tune

    data, _ = toy
    base = load_config(TrainConfig, "conf/demo.yml", ["--num_entity_vectors=300", "--vector_dim=8"])
    cfg = _cfg(max_jobs=3, max_parallel_jobs=2, strategy="random")

    def submit(spec):  # no training: every trial reports an error
        fut: cf.Future = cf.Future()
        fut.set_result(trial_result(spec.number, FAILED, error=f"boom {spec.number}"))
        return fut

    train = read_pairs_table(spark, str(data / "train.csv"))
    val = read_pairs_table(spark, str(data / "validation.csv"))
    with pytest.raises(TuningError, match="all 3 trials failed: trial 0: boom 0; trial 1: boom 1; trial 2: boom 2"):
        tune(spark, train, val, cfg, base, tmp_path / "out", submit=submit)
    table = pd.read_csv(tmp_path / "out" / "results.csv")  # the table is written all the same
    assert list(table["TrainingJobStatus"]) == ["Failed"] * 3
    assert not (tmp_path / "out" / "best_model").exists()


@pytest.mark.slow
def test_no_trial_of_the_default_space_collapses(tmp_path):
    """Random trials of the shipped space, trained for real on a toy world (in this process, no Spark): every
    one separates real pairs from random addresses (before, SageMaker's weight_decay range collapsed 3 trials
    of 4 to a coin flip), and each reports both metrics, the objective being shuffled_auc."""
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq
    from toyworld import make_toy_world

    from ipinsights.core.hashing import hash_strings
    from ipinsights.core.ip import parse_ip
    from ipinsights.tune.config import ParameterRange
    from ipinsights.tune.trials import run_trial

    world = make_toy_world(n_entities=400, events_per_entity=80, n_test=100, seed=2)
    files = {}
    for name in ("train", "validation"):
        t = getattr(world, name)
        table = pa.table({"entity_hash": hash_strings(t["entity"], 0).view(np.int64), "ip": parse_ip(t["ip"]).value})
        pq.write_table(table, tmp_path / f"{name}.parquet")
        files[name] = [str(tmp_path / f"{name}.parquet")]
    data = PreparedData(
        files["train"],
        files["validation"],
        n_train=world.train.num_rows,
        n_validation=world.validation.num_rows,
        n_entities=400,
    )
    cfg = config_from_dict(
        TuneConfig,
        {
            "strategy": "random",
            "seed": 3,
            "max_jobs": 6,
            "max_parallel_jobs": 1,
            "objective": "validation:shuffled_auc",
            "threads_per_trial": 1,
            "early_stopping": {"type": "off"},
        },
    )
    base = load_config(TrainConfig, "conf/demo.yml", ["--model.ip_hash_buckets=4096", "--ipv6_hash_buckets=64"])
    with cf.ThreadPoolExecutor(1) as pool:
        records = run_trials(cfg, base, data, str(tmp_path / "trials"), lambda spec: pool.submit(run_trial, spec))
    assert [r.status for r in records] == [COMPLETED] * 6, [r.error for r in records]
    for r in records:
        last = r.history[-1]
        assert last["discriminator_auc"] >= 0.9, (r.params, last)  # no collapsed trial
        assert r.objective == last["shuffled_auc"] and r.metric == "shuffled_auc"
    # What the default space keeps out: a decay SageMaker's range draws most of the time collapses the model.
    heavy = dataclasses.replace(cfg, space=(ParameterRange("weight_decay", "categorical", values=(0.3,)),), max_jobs=1)
    with cf.ThreadPoolExecutor(1) as pool:
        (collapsed,) = run_trials(heavy, base, data, str(tmp_path / "heavy"), lambda spec: pool.submit(run_trial, spec))
    assert collapsed.history[-1]["discriminator_auc"] < 0.7, collapsed.history[-1]
    # Every trial's entity vectors: 2 per training entity, derived from the data (the space leaves them out).
    assert {r.history[-1].get("epoch") for r in records} and all(
        json.loads((tmp_path / "trials" / f"trial-{r.number:03d}" / "model" / "model.json").read_text())[
            "hyperparameters"
        ]["num_entity_vectors"]
        == 800
        for r in records
        if r.model_dir
    )


def test_labelled_objective_without_labels_is_refused_before_any_write(tmp_path):
    from ipinsights.tune.driver import tune

    base = load_config(TrainConfig, "conf/demo.yml")
    out = tmp_path / "out"
    (out / "trials").mkdir(parents=True)  # an earlier job's trials: not deleted by a refused rerun
    with pytest.raises(ConfigError, match="labelled_recall needs labelled validation rows"):
        tune(None, None, None, _cfg(objective="validation:labelled_recall"), base, out)  # type: ignore[arg-type]
    assert sorted(p.name for p in out.iterdir()) == ["trials"]
