"""The ingest run end to end on tiny logs written in the test: files, gzip, globs, reruns, bad ratio."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.spark

LINE = '{ip} - {user} [{day}/Oct/2026:{hh}:30:00 -0500] "GET /login_success HTTP/1.1" 200 476 "-" "Mozilla/5.0"'


def good(n: int, day: int = 10, hh: str = "12") -> list[str]:
    return [LINE.format(ip=f"10.0.{i // 250}.{i % 250 + 1}", user=f"user_{i % 7}", day=day, hh=hh) for i in range(n)]


def write(path, lines, gz=False):
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return str(path)


def config(tmp_path, inputs, **kw):
    from ipinsights.config import load_config
    from ipinsights.ingest import IngestConfig

    overrides = {"inputs": ",".join(inputs), "output": str(tmp_path / "events"), "run_id": "r1", **kw}
    return load_config(IngestConfig, "conf/ingest.yml", {k: str(v) for k, v in overrides.items()})


def test_gzip_glob_rerun_is_idempotent(spark, tmp_path):
    from ipinsights import io
    from ipinsights.ingest import run_ingest

    logs = tmp_path / "logs"
    logs.mkdir()
    write(logs / "a.log", [*good(20, hh="12"), "garbage line"])
    write(logs / "b.log.gz", [*good(10, day=10, hh="23"), LINE.format(ip="::1", user="v6", day=11, hh="01")], gz=True)
    cfg = config(tmp_path, [str(logs / "*.log*")], **{"quality.max_bad_ratio": 0.1})
    s1 = run_ingest(spark, cfg)
    assert (s1["lines_read"], s1["kept"], s1["quarantined"]) == (32, 31, 1)
    assert s1["quarantined_by_reason"] == {"field_count": 1}
    assert s1["kept_by_day"] == {"2026-10-10": 20, "2026-10-11": 11}  # 23:30 -0500 is the next UTC day
    assert len(s1["per_file"]) == 2
    assert json.loads(Path(cfg.summary).read_text())["kept"] == 31
    first = sorted(io.read_events(spark, cfg.output).collect())
    run_ingest(spark, cfg)  # same input again: same partitions replaced, nothing duplicated
    again = io.read_events(spark, cfg.output)
    assert sorted(again.collect()) == first
    assert [f.name for f in again.schema.fields] == ["entity", "ip", "ip_int", "ip_version", "ts", "source_file", "dt"]
    v6 = again.where("ip_version = 6").collect()
    assert [(r.entity, r.ip, r.ip_int, str(r.dt)) for r in v6] == [("v6", "::1", None, "2026-10-11")]
    assert v6[0].source_file.endswith("b.log.gz")  # provenance: the log file each event came from
    assert sorted(p.name for p in (tmp_path / "events").glob("dt=*")) == ["dt=2026-10-10", "dt=2026-10-11"]
    assert not list((tmp_path / "events_staging").glob("*"))  # the run's staging folder is gone
    run_ingest(spark, config(tmp_path, [str(logs / "*.log*")], files_per_day=3, **{"quality.max_bad_ratio": 0.1}))
    assert sorted(io.read_events(spark, cfg.output).collect()) == first  # shuffled into 3 files per day: same rows
    assert max(len(list(d.glob("*.parquet"))) for d in (tmp_path / "events").glob("dt=*")) <= 3
    q = spark.read.parquet(cfg.quarantine).collect()
    assert [(r.reason, r.raw, r.run_id) for r in q] == [("field_count", "garbage line", "r1")]
    assert q[0].source_file.endswith("a.log")


def test_bad_ratio_fails_and_writes_no_events(spark, tmp_path):
    from ipinsights.ingest import BadInputError, run_ingest

    path = write(tmp_path / "bad.log", [*good(4), "\x00\x01junk", "x" * 10000, "", good(1)[0][:-10]])
    cfg = config(tmp_path, [path], **{"quality.max_bad_ratio": 0.2})
    with pytest.raises(BadInputError) as err:
        run_ingest(spark, cfg)
    summary = err.value.summary
    assert summary["quarantined_by_reason"] == {"binary": 1, "empty": 1, "overlong": 1, "truncated": 1}
    assert summary["status"].startswith("failed") and summary["kept"] == 4
    assert not (tmp_path / "events").exists()
    assert json.loads(Path(cfg.summary).read_text())["quarantined"] == 4
    assert spark.read.parquet(cfg.quarantine).count() == 4


def test_main_end_to_end(spark, tmp_path, capsys):
    from ipinsights_jobs import ingest

    path = write(tmp_path / "a.log", [*good(5), good(1)[0].replace("/login_success", "/login_success?u=zed")])
    out = str(tmp_path / "ev")
    rc = ingest.main(
        [
            "--config",
            "conf/ingest.yml",
            f"--inputs={path}",
            f"--output={out}",
            "--entity.field=query",
            "--query_param=u",
            "--max_bad_ratio=1",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["kept"], summary["quarantined_by_reason"]) == (1, {"missing_entity": 5})
    assert spark.read.parquet(out).first().entity == "zed"
    assert ingest.main(["--config", "conf/ingest.yml", f"--output={out}"]) == 2  # no inputs: config error
    assert ingest.main(["--config", "conf/ingest.yml", f"--inputs={path}", f"--output={out}"]) == 0


def test_split_and_sagemaker_csv(spark, tmp_path):
    from ipinsights import splits
    from ipinsights.ingest import run_ingest

    lines = [ln for d in (10, 11, 12) for ln in good(3, day=d, hh="08")]
    cfg = config(tmp_path, [write(tmp_path / "a.log", lines)])
    run_ingest(spark, cfg)
    parts = splits.time_window_split(spark, cfg.output, train_days=2, validation_days=1)
    assert {k: v.count() for k, v in parts.items()} == {"train": 6, "validation": 3}
    csv = tmp_path / "train.csv"
    splits.export_pairs_csv(parts["train"], str(csv))
    rows = csv.read_text().splitlines()
    assert len(rows) == 6 and rows[0].count(",") == 1 and not rows[0].startswith("entity")
    splits.export_pairs_csv(parts["validation"], str(tmp_path / "val"), single_file=False)
    assert sum(len(p.read_text().splitlines()) for p in (tmp_path / "val").glob("part-*")) == 3
    assert not list(tmp_path.glob(".*tmp*"))
