"""Metrics, CSV readers, evaluation and the ``ipinsights`` command (train + evaluate on CSV files)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.csv as pacsv
import pytest
from toyworld import make_toy_world

from ipinsights.core.errors import DataFormatError
from ipinsights.core.metrics import roc_auc, threshold_table
from ipinsights.score.evaluate import baseline_scores, evaluate_scores
from ipinsights.storage.sagemaker_csv import read_labelled_csv, read_pairs_csv
from ipinsights_jobs import cli


def _brute_auc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    return ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)


def test_roc_auc_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.integers(0, 5, 200).astype(float)
        y = rng.integers(0, 2, 200)
        assert roc_auc(s, y) == pytest.approx(_brute_auc(s, y))
    assert roc_auc(np.ones(10), np.r_[np.zeros(5), np.ones(5)]) == 0.5
    assert np.isnan(roc_auc(np.ones(3), np.ones(3)))


def test_threshold_table():
    rows = threshold_table(np.array([0.1, 0.5, 0.9, 0.95]), np.array([0, 0, 1, 1]), np.array([0.4, 0.92]))
    assert rows[0]["flagged"] == 3 and rows[0]["true_positives"] == 2 and rows[0]["precision"] == pytest.approx(2 / 3)
    assert rows[1]["recall"] == 0.5 and rows[1]["false_positive_rate"] == 0.0


def test_baselines():
    b = baseline_scores(
        ["a", "a"],
        ["10.0.0.1", "10.1.0.1"],
        ["a", "a", "a", "a", "b"],
        ["10.0.0.1", "10.0.0.9", "10.1.7.1", "11.0.0.1", "10.0.0.1"],
    )
    assert b["seen_exact_ip"].tolist() == [0, 1, 1, 1, 1]
    assert b["seen_same_24"].tolist() == [0, 0, 1, 1, 1]
    assert b["seen_same_16"].tolist() == [0, 0, 0, 1, 1]


def test_per_kind_auc_uses_normal_rows():
    scores = np.array([0.0, 0.1, 0.2, 5.0, 6.0, 0.05, 0.15])
    labels = np.array([0, 0, 0, 1, 1, 0, 0])
    kinds = np.array(["normal"] * 3 + ["random_ip"] * 2 + ["own_network"] * 2)
    ev = evaluate_scores(scores, labels, kinds)
    assert ev.auc["model"]["random_ip"] == 1.0
    assert ev.auc["model"]["own_network"] == pytest.approx(
        _brute_auc(np.r_[0.05, 0.15, 0, 0.1, 0.2], np.r_[1, 1, 0, 0, 0])
    )


def test_csv_errors_name_file_and_line(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("u1,1.2.3.4\nu2,5.6.7.8,extra\n")
    with pytest.raises(DataFormatError, match=r"t.csv:2: expected 2 fields, got 3"):
        read_pairs_csv(p)
    p.write_text("")
    with pytest.raises(DataFormatError, match="no rows"):
        read_pairs_csv(p)
    p.write_text("u1,1.2.3.4,yes\n")
    with pytest.raises(DataFormatError, match="label"):
        read_labelled_csv(p)
    p.write_text("u1,1.2.3.4,1\nu2,1.2.3.5,0\n")
    t = read_labelled_csv(p)
    assert t["label"].to_pylist() == [1, 0] and t["kind"].to_pylist() == ["all", "all"]
    with pytest.raises(DataFormatError, match="no such file"):
        read_pairs_csv(tmp_path / "missing.csv")


@pytest.fixture(scope="module")
def csvs(tmp_path_factory):
    d = tmp_path_factory.mktemp("csv")
    w = make_toy_world(n_entities=150, events_per_entity=60, n_test=1000, seed=2)
    opt = pacsv.WriteOptions(include_header=False)
    for name in ("train", "validation", "test"):
        pacsv.write_csv(getattr(w, name), d / f"{name}.csv", opt)
    return d


def test_cli_train_and_evaluate(csvs, tmp_path, capsys):
    model = tmp_path / "model"
    rc = cli.main(
        [
            "train",
            "--train",
            str(csvs / "train.csv"),
            "--validation",
            str(csvs / "validation.csv"),
            "--validation-labelled",
            str(csvs / "test.csv"),
            "--output",
            str(model),
            "--config",
            "conf/demo.yml",
            "--metrics",
            str(tmp_path / "m.jsonl"),
            "--epochs=3",
            "--num_entity_vectors=300",
            "--vector_dim=32",
            "--mini_batch_size=200",
            "--train.num_threads=1",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "model written to" in out
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3] and lines[-1]["discriminator_auc"] > 0.9
    # Every epoch: shuffled_auc, and per labelled kind its AUC and recall at 1% FPR.
    assert 0.5 < lines[-1]["shuffled_auc"] <= 1.0
    assert lines[-1]["auc_random_ip"] > 0.9 and 0.0 <= lines[-1]["recall1_random_ip"] <= 1.0
    assert "auc_same_16_other_pool" in lines[-1] and 0.0 < lines[-1]["labelled_recall"] <= 1.0
    manifest = json.loads((model / "model.json").read_text())
    assert manifest["config"]["hyperparameters"]["epochs"] == 3  # resolved config saved with the model
    from ipinsights.score.scorer import Scorer

    counts = Scorer.load(model).training_counts(["user_0", "user_1", "never-seen"])
    assert counts[0] > 0 and counts[1] > 0 and counts[2] == 0
    rc = cli.main(
        [
            "evaluate",
            "--model",
            str(model),
            "--test",
            str(csvs / "test.csv"),
            "--train",
            str(csvs / "train.csv"),
            "--plot",
            str(tmp_path / "h.png"),
            "--output",
            str(tmp_path / "e.json"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "seen_same_24" in out and "precision" in out
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["auc"]["model"]["random_ip"] > 0.95
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_refuses_bad_hyperparameter_before_reading(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(
            [
                "train",
                "--train",
                str(tmp_path / "nope.csv"),
                "--output",
                str(tmp_path / "m"),
                "--config",
                "conf/train.yml",
                "--learning_rate=50",
            ]
        )
    assert err.value.code == 2
    assert "learning_rate=50.0 is out of range: allowed in [1e-06, 10.0]" in capsys.readouterr().err


def test_cli_reports_bad_files(tmp_path, csvs, caplog):
    rc = cli.main(["evaluate", "--model", str(tmp_path), "--test", str(csvs / "test.csv")])
    assert rc == 2 and "not an ipinsights model" in caplog.text
    assert cli.main([]) == 2
