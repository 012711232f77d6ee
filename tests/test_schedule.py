"""Date-driven runs: one run date (``--date``, as a scheduler gives it) and the day counts of the settings
decide a training run's windows; the model records them, and scoring a day takes its calibration days (the
model's validation days, never its training days) and its profiles' days from there."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from ipinsights.core.config import ConfigError, ScheduleOptions
from ipinsights.score.config import ScoreConfig


def test_a_run_date_gives_the_windows_before_it():
    assert ScheduleOptions().windows("2024-01-10") == {
        "train": ("2024-01-02", "2024-01-08"),
        "validation": ("2024-01-09", "2024-01-09"),
    }
    assert ScheduleOptions(train_days=2, validation_days=0).windows("2024-03-01") == {
        "train": ("2024-02-28", "2024-02-29"),  # a leap year's last days
        "validation": None,
    }
    with pytest.raises(ConfigError, match="--date"):
        ScheduleOptions().windows("10/01/2024")


def test_scoring_takes_the_models_windows_where_the_settings_name_none():
    base = ScoreConfig(model="m", scores="s", flagged="f", reports="r", target_fpr=0.01, events="e")
    manifest = {"training": {"windows": {"train": ["2024-01-01", "2024-01-07"], "validation": ["2024-01-08"] * 2}}}
    cfg = base.with_model_windows(manifest)
    assert (cfg.calibration_start_date, cfg.calibration_end_date) == ("2024-01-08", "2024-01-08")
    assert (cfg.train_start_date, cfg.train_end_date) == ("2024-01-01", "2024-01-07")
    mine = ScoreConfig(
        **{**base.__dict__, "calibration_start_date": "2024-01-05", "calibration_end_date": "2024-01-05"}
    )
    kept = mine.with_model_windows(manifest)  # the settings win
    assert (kept.calibration_start_date, kept.train_start_date) == ("2024-01-05", "2024-01-01")
    assert base.with_model_windows({"training": {}}) == base  # a model without windows changes nothing
    no_events = ScoreConfig(model="m", scores="s", flagged="f", reports="r", threshold=1.0)
    assert no_events.with_model_windows(manifest) == no_events  # a batch-transform CSV has no days


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_train_and_score_driven_by_one_date(spark, tmp_path, capsys):
    from ipinsights.storage.modelfile import read_manifest
    from ipinsights.synth import SynthSpec, generate_dataset
    from ipinsights_jobs import score, train

    spec = SynthSpec(
        users=60,
        days=5,
        train_days=2,
        validation_days=1,
        attacks=20,
        validation_attacks=10,
        n_files=1,
        networks=100,
        seed=5,
        events_min=20,
        events_mean=40.0,
    )
    paths = generate_dataset(tmp_path / "synth", spec)
    assert paths.events is not None
    events = tmp_path / "events"
    truth = pq.read_table(paths.events).select(["entity", "ip", "ip_int", "ip_version", "ts", "dt"])
    pq.write_to_dataset(truth, events, partition_cols=["dt"])
    run = tmp_path / "run"
    settings = [
        "--config",
        "conf/demo.yml",
        "--schedule.train_days=2",
        "--epochs=1",
        "--vector_dim=8",
        "--num_entity_vectors=200",
    ]
    assert train.main(["--events", str(events), "--date", "2024-01-04", "--output", str(run), *settings]) == 0
    windows = read_manifest(str(run / "model"))["training"]["windows"]
    assert windows == {"train": ["2024-01-01", "2024-01-02"], "validation": ["2024-01-03", "2024-01-03"]}
    capsys.readouterr()
    out = tmp_path / "out"
    args = [f"--scores={out / 'scores'}", f"--flagged={out / 'flagged'}", f"--reports={out / 'reports'}"]
    rc = score.main(
        ["--date", "2024-01-05", "--model", str(run / "model"), f"--events={events}", "--target-fpr", "0.05", *args]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "events dt 2024-01-03..2024-01-03" in printed, printed  # calibrated on the validation day
    scores = pq.read_table(out / "scores" / "dt=2024-01-05")
    assert scores.num_rows > 0 and scores["entity_percentile"].null_count < scores.num_rows  # profiles built
    assert json.loads((run / "config.json").read_text())["schedule"] == {"train_days": 2, "validation_days": 1}
