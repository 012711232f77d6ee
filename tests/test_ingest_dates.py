"""Date-driven ingest: ``--date D`` reads the day's logs through an input's ``{date:FMT}`` placeholder,
``--start-date``/``--end-date`` each day's of a backfill; a day without logs, a placeholder without a date
and a date without a placeholder are usage errors naming what to change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ipinsights.core.config import ConfigError
from ipinsights.ingest.job import IngestConfig

LINE = '10.1.{d}.{i} - user_{i} [{d:02d}/Jan/2026:12:00:00 +0000] "GET /login_success HTTP/1.1" 200 9 "-" "M"'
DAYS = (8, 9, 10)


@pytest.fixture
def logs(tmp_path) -> Path:
    """``logs/2026/01/DD/a.log`` for days 8, 9 and 10: each day's file holds 3 events of that day."""
    for d in DAYS:
        folder = tmp_path / "logs" / "2026" / "01" / f"{d:02d}"
        folder.mkdir(parents=True)
        (folder / "a.log").write_text("".join(LINE.format(d=d, i=i) + "\n" for i in range(1, 4)))
        (folder / "_SUCCESS").write_text("")  # a marker, not a log: never counted as the day's logs
    return tmp_path / "logs"


def _ingest(logs: Path, out: Path, *argv: str, engine: str = "arrow") -> int:
    from ipinsights_jobs import ingest

    pattern = f"{logs}/{{date:%Y/%m/%d}}/*.log"
    argv = ("--config", "conf/ingest.yml", f"--inputs={pattern}", f"--output={out}", *argv, f"--engine={engine}")
    return ingest.main(list(argv))


def test_a_placeholder_is_formatted_per_day_and_nothing_else_is_touched():
    cfg = IngestConfig(
        inputs=("s3://b/logs/{date:%Y/%m/%d}/{web,api}-*.gz", "hdfs://nn:8020/x/dt={date}/", "s3://b/static/[0-9].log"),
        output="s3://lake/events",
        start_date="2026-02-28",
        end_date="2026-03-01",
    )
    assert cfg.days() == ["2026-02-28", "2026-03-01"]
    assert cfg.dated_inputs() == [
        ("s3://b/logs/2026/02/28/{web,api}-*.gz", "2026-02-28", "s3://b/logs/{date:%Y/%m/%d}/{web,api}-*.gz"),
        ("s3://b/logs/2026/03/01/{web,api}-*.gz", "2026-03-01", "s3://b/logs/{date:%Y/%m/%d}/{web,api}-*.gz"),
        ("hdfs://nn:8020/x/dt=2026-02-28/", "2026-02-28", "hdfs://nn:8020/x/dt={date}/"),
        ("hdfs://nn:8020/x/dt=2026-03-01/", "2026-03-01", "hdfs://nn:8020/x/dt={date}/"),
        ("s3://b/static/[0-9].log", None, "s3://b/static/[0-9].log"),  # no placeholder: read as it is
    ]
    undated = IngestConfig(inputs=("logs/{a,b}.log",), output="out")  # a glob's braces are no placeholder
    assert undated.resolved_inputs() == ["logs/{a,b}.log"] and undated.days() == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"inputs": ("logs/{date:%Y%m%d}.log",)}, r"'logs/\{date:%Y%m%d\}.log' holds a \{date:...\} .*--date"),
        ({"inputs": ("logs/*.log",), "start_date": "2026-01-09", "end_date": "2026-01-09"}, "no input holds a"),
        ({"inputs": ("logs/{date}.log",), "start_date": "2026-01-09"}, "start_date and end_date go together"),
        ({"inputs": ("logs/{date}.log",), "start_date": "2026-01-10", "end_date": "2026-01-09"}, "before start date"),
        ({"inputs": ("logs/{date}.log",), "start_date": "9/1/2026", "end_date": "2026-01-09"}, "must look like"),
    ],
)
def test_dates_and_placeholders_must_go_together(settings, message):
    with pytest.raises(ConfigError, match=message):
        IngestConfig(output="out", **settings)


@pytest.mark.spark
def test_a_day_reads_its_own_logs_and_a_backfill_each_days(spark, logs, tmp_path, capsys):
    from ipinsights.storage.events import read_events

    out = tmp_path / "events"
    assert _ingest(logs, out, "--date", "2026-01-09") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["inputs"] == [f"{logs}/2026/01/09/*.log"] and summary["days"] == ["2026-01-09"]
    assert list(summary["per_file"]) == [f"file:{logs}/2026/01/09/a.log"]
    assert summary["kept_by_day"] == {"2026-01-09": 3}
    assert summary["config"]["inputs"] == [f"{logs}/{{date:%Y/%m/%d}}/*.log"]  # the pattern, beside what it gave
    saved = json.loads(Path(summary["config"]["summary"]).read_text())
    assert saved["inputs"] == summary["inputs"]  # the summary file records the resolved inputs too

    assert _ingest(logs, out, "--start-date", "2026-01-08", "--end-date", "2026-01-09") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["inputs"] == [f"{logs}/2026/01/{d}/*.log" for d in ("08", "09")]
    assert summary["kept_by_day"] == {"2026-01-08": 3, "2026-01-09": 3}
    days = sorted(r.dt for r in read_events(spark, str(out)).select("dt").distinct().collect())
    assert days == ["2026-01-08", "2026-01-09"]  # day 10 was never read


@pytest.mark.spark
@pytest.mark.parametrize("engine", ["arrow", "spark"])
def test_a_missing_day_fails_naming_it_before_anything_is_written(spark, logs, tmp_path, capsys, engine):
    (logs / "2026" / "01" / "09" / "a.log").unlink()  # day 9 holds only its _SUCCESS marker now
    out = tmp_path / "events"
    rc = _ingest(logs, out, "--start-date", "2026-01-08", "--end-date", "2026-01-12", engine=engine)
    assert rc == 2
    err = capsys.readouterr().err
    pattern = f"{logs}/{{date:%Y/%m/%d}}/*.log"
    for day in ("2026-01-09", "2026-01-11", "2026-01-12"):
        assert f"{day}: '{pattern}' matches no log file" in err, err
    assert "2026-01-08:" not in err and "2026-01-10:" not in err
    assert not out.exists() and not Path(f"{out}_staging").exists()


def test_the_date_flags_are_checked_as_in_every_job(logs, tmp_path, capsys):
    out = tmp_path / "events"
    assert _ingest(logs, out) == 2  # a placeholder without a date: its message names the input
    assert "holds a {date:...} placeholder" in capsys.readouterr().err
    from ipinsights_jobs import ingest

    argv = ["--config", "conf/ingest.yml", f"--inputs={logs}/2026/01/09/a.log", f"--output={out}", "--date=2026-01-09"]
    assert ingest.main(argv) == 2  # a date without a placeholder would read the same files whatever the day
    assert "no input holds a {date:FMT} placeholder" in capsys.readouterr().err
    for bad in (["--date", "2026-01-09", "--end-date", "2026-01-10"], ["--start-date", "2026-01-09"]):
        with pytest.raises(SystemExit) as exc:
            _ingest(logs, out, *bad)
        assert exc.value.code == 2
    assert "not both" in capsys.readouterr().err
    assert not out.exists()
