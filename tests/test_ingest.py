"""The ingest run end to end on tiny logs written in the test: files, gzip, globs, reruns, bad ratio."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

LINE = '{ip} - {user} [{day}/Oct/2026:{hh}:30:00 -0500] "GET /login_success HTTP/1.1" 200 476 "-" "Mozilla/5.0"'


def good(n: int, day: int = 10, hh: str = "12") -> list[str]:
    return [LINE.format(ip=f"10.0.{i // 250}.{i % 250 + 1}", user=f"user_{i % 7}", day=day, hh=hh) for i in range(n)]


def write(path, lines, gz=False):
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return str(path)


def config(tmp_path, inputs, **kw):
    from ipinsights.core.config import load_config
    from ipinsights.ingest.job import IngestConfig

    overrides = {"inputs": ",".join(inputs), "output": str(tmp_path / "events"), "run_id": "r1", **kw}
    return load_config(IngestConfig, "conf/ingest.yml", {k: str(v) for k, v in overrides.items()})


@pytest.mark.slow
@pytest.mark.spark
def test_gzip_glob_rerun_is_idempotent(spark, tmp_path):
    from ipinsights.ingest.job import run_ingest
    from ipinsights.storage.events import read_events

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
    first = sorted(read_events(spark, cfg.output).collect())
    run_ingest(spark, cfg)  # same input again: same partitions replaced, nothing duplicated
    again = read_events(spark, cfg.output)
    assert sorted(again.collect()) == first
    assert [f.name for f in again.schema.fields] == [
        *("entity", "ip", "ip_int", "ip_version", "ts", "source_file"),
        *("user_agent", "ua_family", "ua_os", "ua_device", "dt"),
    ]
    assert {(r.user_agent, r.ua_family, r.ua_os, r.ua_device) for r in again.collect()} == {
        ("Mozilla/5.0", "Other", "Other", "other")
    }
    v6 = again.where("ip_version = 6").collect()
    assert [(r.entity, r.ip, r.ip_int, str(r.dt)) for r in v6] == [("v6", "::1", None, "2026-10-11")]
    assert v6[0].source_file.endswith("b.log.gz")  # provenance: the log file each event came from
    assert sorted(p.name for p in (tmp_path / "events").glob("dt=*")) == ["dt=2026-10-10", "dt=2026-10-11"]
    assert not list((tmp_path / "events_staging").glob("*"))  # the run's staging folder is gone
    # files_per_day shuffles, so the spark engine runs: the same rows, in at most 3 files per day
    s3 = run_ingest(spark, config(tmp_path, [str(logs / "*.log*")], files_per_day=3, **{"quality.max_bad_ratio": 0.1}))
    assert (s1["engine"], s3["engine"]) == ("arrow", "spark")
    assert sorted(read_events(spark, cfg.output).collect()) == first
    assert max(len(list(d.glob("*.parquet"))) for d in (tmp_path / "events").glob("dt=*")) <= 3
    q = spark.read.parquet(cfg.quarantine).collect()
    assert [(r.reason, r.raw, r.run_id) for r in q] == [("field_count", "garbage line", "r1")]
    assert q[0].source_file.endswith("a.log")


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.parametrize("engine", ["arrow", "spark"])
def test_bad_ratio_fails_and_writes_no_events(spark, tmp_path, engine):
    from ipinsights.ingest.job import BadInputError, run_ingest

    path = write(tmp_path / "bad.log", [*good(4), "\x00\x01junk", "x" * 10000, "", good(1)[0][:-10]])
    cfg = config(tmp_path, [path], engine=engine, **{"quality.max_bad_ratio": 0.2})
    with pytest.raises(BadInputError) as err:
        run_ingest(spark, cfg)
    summary = err.value.summary
    assert summary["quarantined_by_reason"] == {"binary": 1, "empty": 1, "overlong": 1, "truncated": 1}
    assert summary["status"].startswith("failed") and summary["kept"] == 4
    assert not (tmp_path / "events").exists()
    assert json.loads(Path(cfg.summary).read_text())["quarantined"] == 4
    assert spark.read.parquet(cfg.quarantine).count() == 4


@pytest.mark.spark
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
    assert ingest.main(["--config", "conf/ingest.yml", f"--inputs={tmp_path}/nope*.log", f"--output={out}"]) == 2
    assert ingest.main(["--config", "conf/ingest.yml", f"--inputs={path}", f"--output={out}"]) == 0


@pytest.mark.slow
@pytest.mark.spark
def test_split_and_sagemaker_csv(spark, tmp_path):
    from ipinsights.ingest.job import run_ingest
    from ipinsights.storage.events import time_window_split
    from ipinsights.storage.sagemaker_csv import export_pairs_csv

    lines = [ln for d in (10, 11, 12) for ln in good(3, day=d, hh="08")]
    cfg = config(tmp_path, [write(tmp_path / "a.log", lines)])
    run_ingest(spark, cfg)
    parts = time_window_split(spark, cfg.output, train_days=2, validation_days=1)
    assert {k: v.count() for k, v in parts.items()} == {"train": 6, "validation": 3}
    csv = tmp_path / "train.csv"
    export_pairs_csv(parts["train"], str(csv))
    rows = csv.read_text().splitlines()
    assert len(rows) == 6 and rows[0].count(",") == 1 and not rows[0].startswith("entity")
    export_pairs_csv(parts["validation"], str(tmp_path / "val"), single_file=False)
    assert sum(len(p.read_text().splitlines()) for p in (tmp_path / "val").glob("part-*")) == 3
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.oldest_spark
@pytest.mark.slow
@pytest.mark.spark
def test_engines_write_the_same_table(spark, tmp_path):
    """The arrow engine (Python tasks, split files) and the spark engine give the same events,
    counts and quarantine for the same logs."""
    from ipinsights.ingest.job import run_ingest
    from ipinsights.storage.events import read_events

    logs = tmp_path / "logs"
    logs.mkdir()
    junk = ["", "x" * 9000, '1.2.3.4 - u [10/Oct/2026:10:00:00 +0000] "GET /login_success HTTP/1.1" 2']
    write(logs / "a.log", [*good(300, day=10), *junk, *good(200, day=11, hh="23")])
    write(logs / "b.log.gz", good(50, day=12), gz=True)
    results = {}
    for engine in ("arrow", "spark"):
        out = tmp_path / engine
        cfg = config(
            tmp_path, [str(logs)], output=str(out), engine=engine, split_mb=0, **{"quality.max_bad_ratio": 0.5}
        )
        summary = run_ingest(spark, cfg)
        events = sorted(read_events(spark, str(out)).collect())
        bad = sorted((r.reason, r.source_file, r.raw) for r in spark.read.parquet(cfg.quarantine).collect())
        results[engine] = (summary, events, bad)
    (sa, ea, qa), (ss, es, qs) = results["arrow"], results["spark"]
    keys = ("lines_read", "kept", "filtered_out", "quarantined", "quarantined_by_reason", "kept_by_day", "per_file")
    assert {k: sa[k] for k in keys} == {k: ss[k] for k in keys}
    assert sa["kept_by_day"] == {"2026-10-10": 300, "2026-10-12": 250}
    assert ea == es and qa == qs and len(qa) == 3


def test_split_reading_reads_every_line_once(tmp_path):
    """Any split size and read block size: each line once, in order (a line belongs to the split it starts in)."""
    import random

    import pyarrow as pa

    from ipinsights.storage.logfiles import iter_split_lines, plan_log_splits

    rnd = random.Random(3)
    path = tmp_path / "a.log"
    for _ in range(200):
        lines = [b"x" * rnd.randint(0, 12) + (b"\r" if rnd.random() < 0.2 else b"") for _ in range(rnd.randint(0, 30))]
        data = b"\n".join(lines) + (b"\n" if lines and rnd.random() < 0.5 else b"")
        path.write_bytes(data)
        expected = [line.rstrip(b"\r") for line in data.split(b"\n")]
        if not data or data.endswith(b"\n"):
            expected.pop()  # a final newline ends the last line, it starts no new one
        for split_bytes in (1, 2, 3, 7, 100):
            for cap in (None, 5):
                got = []
                for split in plan_log_splits([(str(path), len(data))], split_bytes):
                    for arr in iter_split_lines(split, block_bytes=rnd.randint(1, 9), max_line_bytes=cap):
                        got += arr.view(pa.binary()).to_pylist()
                # A line longer than the cap may come out cut, but never below the cap (still too long).
                assert len(got) == len(expected), (data, split_bytes, cap)
                for g, e in zip(got, expected, strict=True):
                    assert g == e or (cap is not None and len(e) > cap and e.startswith(g) and len(g) >= cap)


def test_a_line_without_newlines_is_held_only_up_to_the_cap(tmp_path):
    """A 'log' of 20 MB without a newline (then two lines): read block by block, the endless line keeps
    only its first max_line_bytes (it was gathered whole, copied once per block); the lines after it are intact."""
    import pyarrow as pa

    from ipinsights.storage.logfiles import iter_split_lines, plan_log_splits

    path = tmp_path / "a.log"
    path.write_bytes(b"y" * (20 << 20) + b"\nsecond\nthird")
    (split,) = plan_log_splits([(str(path), path.stat().st_size)], 64 << 20)
    blocks = list(iter_split_lines(split, block_bytes=1 << 16, max_line_bytes=9000))
    lines = [line for b in blocks for line in b.view(pa.binary()).to_pylist()]
    assert lines == [b"y" * 9000, b"second", b"third"]  # the newline starts a block: nothing after the cut
    assert max(b.nbytes for b in blocks) < 1 << 20  # never the whole 20 MB in memory


@pytest.mark.spark
@pytest.mark.parametrize("engine", ["arrow", "spark"])
def test_a_corrupt_compressed_file_is_recorded_and_the_run_goes_on(spark, tmp_path, engine):
    """A truncated .gz (and a corrupt .bz2) failed its task and so the whole job: now each counts as one
    bad line ('unreadable', in the summary and the quarantine), the lines read before the error are kept.
    With either engine (the spark engine reads compressed files with the arrow engine's reader)."""

    from ipinsights.ingest.job import run_ingest
    from ipinsights.storage.events import read_events

    logs = tmp_path / "logs"
    logs.mkdir()
    write(logs / "ok.log", good(50))
    whole = gzip.compress(("\n".join(good(20000, day=11)) + "\n").encode())
    (logs / "cut.log.gz").write_bytes(whole[: len(whole) // 2])  # the upload stopped half way
    (logs / "junk.log.bz2").write_bytes(b"BZh9" + bytes(range(256)) * 4)
    cfg = config(tmp_path, [str(logs)], engine=engine, **{"quality.max_bad_ratio": 0.01})
    summary = run_ingest(spark, cfg)
    names = {f.rsplit("/", 1)[1]: v for f, v in summary["per_file"].items()}
    assert names["cut.log.gz"]["by_reason"] == {"unreadable": 1}
    assert names["junk.log.bz2"]["by_reason"] == {"unreadable": 1}
    assert [f.rsplit("/", 1)[1] for f in summary["unreadable_files"]] == ["cut.log.gz", "junk.log.bz2"]
    assert 0 < names["cut.log.gz"]["kept"] < 20000  # what was read before the error
    assert summary["kept_by_day"] == {"2026-10-10": 50, "2026-10-11": names["cut.log.gz"]["kept"]}
    assert read_events(spark, cfg.output).count() == 50 + names["cut.log.gz"]["kept"]
    bad = spark.read.parquet(cfg.quarantine).where("reason = 'unreadable'").collect()
    assert sorted(r.source_file.rsplit("/", 1)[1] for r in bad) == ["cut.log.gz", "junk.log.bz2"]
    assert "unreadable after" in bad[0].raw


def test_log_files_globs_and_folders(tmp_path):
    from ipinsights.storage.logfiles import list_log_files

    for name in ("a.log", "b.log.gz", "_SUCCESS", ".hidden", "sub/c.log"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x\n")
    names = lambda paths: [u.rsplit("/", 1)[1] for u, _ in list_log_files(paths)]  # noqa: E731
    assert names([str(tmp_path)]) == ["a.log", "b.log.gz"]  # a folder: its files, hidden ones skipped
    assert names([f"{tmp_path}/*.log*", f"{tmp_path}/s?b/*"]) == ["a.log", "b.log.gz", "c.log"]
    assert names([f"file://{tmp_path}/{{a,x}}.log"]) == ["a.log"]
    for spelling in (str(tmp_path / "a.log"), f"file://{tmp_path}/a.log", f"file:{tmp_path}/a.log"):
        assert list_log_files([spelling])[0][0] == f"file:{tmp_path}/a.log"  # as Spark names it
    with pytest.raises(FileNotFoundError, match="no log files"):
        list_log_files([f"{tmp_path}/*.txt"])


def test_retried_task_leaves_one_copy(tmp_path):
    """A task attempt that failed after writing (or a speculative twin) leaves files no result reports:
    they are removed, so each line is in the table once."""
    from ipinsights.ingest import logparse
    from ipinsights.ingest.job import _ingest_split, _SplitTask
    from ipinsights.storage.filesystems import ArrowStore
    from ipinsights.storage.logfiles import list_log_files, plan_log_splits
    from ipinsights.storage.publish import drop_unreported

    path = write(tmp_path / "a.log", [*good(5, day=10), *good(3, day=11), "junk"])
    (split,) = plan_log_splits(list_log_files([path]), 1 << 20)
    task = _SplitTask(logparse.LineRules(), str(tmp_path / "staging"))
    _ingest_split(task, (0, split))  # the attempt that failed: its files stay behind
    done = _ingest_split(task, (0, split))
    assert sorted((r["outcome"], r["dt"], r["count"]) for r in done["counts"]) == [
        ("field_count", None, 1),
        ("kept", "2026-10-10", 5),
        ("kept", "2026-10-11", 3),
    ]
    files = sorted((tmp_path / "staging").rglob("*.parquet"))
    assert len(files) == 6  # 2 days + quarantine, twice
    drop_unreported(ArrowStore(), set(done["files"]))
    assert sorted(str(f) for f in (tmp_path / "staging").rglob("*.parquet")) == sorted(done["files"])


@pytest.mark.spark
def test_events_reader_missing_table_is_an_error_absent_day_is_empty(spark, tmp_path):
    """The one missing-table rule: no such table is an error naming it; a day the table lacks is no rows.
    A table written before the user agent's columns reads them as nulls."""
    from ipinsights.storage.events import read_events
    from ipinsights.storage.sagemaker_csv import read_pairs_table

    table = str(tmp_path / "events")
    rows = [("u1", "10.0.0.1", 167772161, 4, None, "file:/a.log", "2026-10-10")]
    before_agents = "entity string, ip string, ip_int long, ip_version int, ts timestamp, source_file string, dt string"
    spark.createDataFrame(rows, before_agents).write.partitionBy("dt").parquet(table)
    assert [
        tuple(r) for r in read_events(spark, table).select("user_agent", "ua_family", "ua_os", "ua_device").collect()
    ] == [(None, None, None, None)]
    typo = str(tmp_path / "evnets")
    for read in (lambda: read_events(spark, typo, "2026-10-10", "2026-10-10"), lambda: read_pairs_table(spark, typo)):
        with pytest.raises(FileNotFoundError, match=f"events table {typo} does not exist"):
            read()
    assert read_events(spark, table, "2026-10-11", "2026-10-12").count() == 0  # no such day: empty
    assert [(r.entity, r.dt) for r in read_events(spark, table, end="2026-10-10").collect()] == [("u1", "2026-10-10")]
    assert read_pairs_table(spark, table, start_date="2026-10-10").collect() == [("u1", "10.0.0.1")]
    with pytest.raises(ValueError, match="before start date"):
        read_events(spark, table, "2026-10-12", "2026-10-10")


@pytest.mark.spark
def test_every_csv_reader_refuses_a_bad_row_naming_file_and_line(spark, tmp_path):
    """One CSV policy: the Arrow reader and the Spark readers refuse the same row with the same message."""
    from ipinsights.core.errors import DataFormatError
    from ipinsights.storage.sagemaker_csv import (
        read_pairs_csv,
        read_pairs_csv_spark,
        read_pairs_spark,
        read_pairs_table,
    )

    good = write(tmp_path / "good.csv", ["u1,10.0.0.1", '"u,2",10.0.0.2', "", "u3,::1"])
    expected = sorted([("u1", "10.0.0.1"), ("u,2", "10.0.0.2"), ("u3", "::1")])
    assert sorted(zip(*read_pairs_csv(good).to_pydict().values(), strict=True)) == expected
    assert sorted(read_pairs_spark(spark, good).collect()) == expected
    assert read_pairs_csv_spark(spark, good, "2026-10-10").columns == ["entity", "ip", "ts", "dt"]
    bad = write(tmp_path / "bad.csv", ["u1,10.0.0.1", "u2,10.0.0.2", "u3,10.0.0.3,extra", "u4"])
    readers = {
        "arrow": lambda: read_pairs_csv(bad),
        "spark": lambda: read_pairs_spark(spark, bad),
        "batch transform": lambda: read_pairs_csv_spark(spark, bad, "2026-10-10"),
        "pairs table": lambda: read_pairs_table(spark, bad),
    }
    for name, read in readers.items():
        with pytest.raises(DataFormatError, match=r"bad.csv:3: expected 2 fields, got 3: 'u3,10.0.0.3,extra'"):
            read()
            pytest.fail(f"the {name} reader accepted a bad row")


@pytest.mark.spark
@pytest.mark.slow
def test_a_failed_publish_keeps_the_old_day(spark, tmp_path, monkeypatch):
    """The ingest's publish fails (an injected S3 copy error on the new day's move): the day it was to
    replace is back in the table, the run fails, and a rerun publishes."""
    from ipinsights.ingest.job import run_ingest
    from ipinsights.storage.events import read_events
    from ipinsights.storage.filesystems import ArrowStore

    logs = tmp_path / "logs"
    logs.mkdir()
    write(logs / "a.log", good(12))
    cfg = config(tmp_path, [str(logs / "a.log")])
    run_ingest(spark, cfg)
    before = sorted(read_events(spark, cfg.output).collect())
    write(logs / "a.log", good(5))  # the file changed: a rerun would replace the day with 5 rows
    real_rename = ArrowStore.rename

    def failing_rename(self, src, dst):
        if "/staging/" not in dst and "_staging/" in src and "/events/dt=" in src:
            raise OSError("injected: copy failed")
        real_rename(self, src, dst)

    monkeypatch.setattr(ArrowStore, "rename", failing_rename)
    with pytest.raises(OSError, match="injected"):
        run_ingest(spark, config(tmp_path, [str(logs / "a.log")], run_id="r2"))
    assert sorted(read_events(spark, cfg.output).collect()) == before
    monkeypatch.setattr(ArrowStore, "rename", real_rename)
    run_ingest(spark, config(tmp_path, [str(logs / "a.log")], run_id="r3"))
    assert read_events(spark, cfg.output).count() == 5


def test_runs_started_together_get_their_own_run_ids(tmp_path):
    """The default run id is the start time plus a random part: runs started in the same second must not
    share a staging folder, summary and quarantine (50 configs are made well within a few seconds)."""
    cfgs = [config(tmp_path, [str(tmp_path / "a.log")], run_id="") for _ in range(50)]
    assert len({c.run_id for c in cfgs}) == 50
    assert len({c.summary for c in cfgs}) == 50


@pytest.mark.spark
def test_inputs_on_the_command_line_keep_their_globs(spark, tmp_path, capsys):
    """``--inputs`` is split on the commas between paths only: ``{a,b}`` and ``[0-9]`` stay globs."""
    from ipinsights_jobs import ingest

    for name in ("a.log", "b.log", "c.log", "host1.log", "host2.log", "hostx.log"):
        write(tmp_path / name, good(1))
    out = str(tmp_path / "ev")
    inputs = f"{tmp_path}/{{a,b}}.log,{tmp_path}/host[0-9].log"
    assert ingest.main(["--config", "conf/ingest.yml", f"--inputs={inputs}", f"--output={out}", "--engine=arrow"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(f.rsplit("/", 1)[1] for f in summary["per_file"]) == ["a.log", "b.log", "host1.log", "host2.log"]
