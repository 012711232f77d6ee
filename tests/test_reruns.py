"""Reruns, late files and interrupted publishes: what a second run finds, it finishes or merges, never loses.

* A publish killed between its renames (a real process, SIGKILLed at each step) is undone or completed
  by the next run, from the journal it left.
* Ingest runs over different files of one day keep each other's rows; a rerun of a file replaces its
  rows (idempotent); a late file adds its own.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DAYS_OLD = ("2024-01-01", "2024-01-02")
DAYS_NEW = ("2024-01-02", "2024-01-03")  # renames: #0 old 01-02 to trash, #1 new 01-02 in, #2 new 01-03 in

# A publish in its own process, killed (SIGKILL: no cleanup runs) when it reaches operation KILL_AT:
# the renames 0..2, then 3 = the first delete of a replaced folder (every rename done).
_KILLED_PUBLISH = """
import os, signal, sys
from ipinsights.storage.filesystems import ArrowStore
from ipinsights.storage.publish import publish_partitions

kill_at, staged, table, trash, journal = int(sys.argv[1]), *sys.argv[2:]

class DyingStore(ArrowStore):
    ops = 0

    def _step(self):
        if DyingStore.ops == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        DyingStore.ops += 1

    def rename(self, src, dst):
        self._step()
        super().rename(src, dst)

    def delete(self, uri):
        if "/_replaced/" in uri:
            self._step()
        return super().delete(uri)

publish_partitions(DyingStore(), staged, table, ["2024-01-02", "2024-01-03"], trash, journal)
"""


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _setup(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    table, staging = tmp_path / "events", tmp_path / "events_staging"
    staged, trash = staging / "run_id=r1" / "events", staging / "run_id=r1" / "_replaced"
    for folder, days, tag in ((table, DAYS_OLD, "old"), (staged, DAYS_NEW, "new")):
        for d in days:
            (folder / f"dt={d}").mkdir(parents=True)
            for part in "ab":
                (folder / f"dt={d}" / f"{tag}-{part}.parquet").write_bytes(f"{tag} {d} {part}".encode())
    return table, staged, trash, staging


@pytest.mark.parametrize("kill_at", [0, 1, 2, 3])
def test_a_publish_killed_at_any_step_is_finished_or_undone_by_the_next_run(tmp_path, kill_at):
    from ipinsights.storage.filesystems import ArrowStore
    from ipinsights.storage.publish import recover_publishes

    table, staged, trash, staging = _setup(tmp_path)
    before, new = _tree(table), _tree(staged)
    journal = staging / "_publish-r1.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_KILLED_PUBLISH),
            str(kill_at),
            str(staged),
            str(table),
            str(trash),
            str(journal),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr  # it died in the middle, as a kill leaves it
    assert journal.exists()
    outcome = recover_publishes(ArrowStore(), str(staging))
    assert not journal.exists()
    if kill_at < 3:  # some folder was still to move: undone, the old days back, the staged ones intact
        assert outcome == {str(journal): "rolled back"}
        assert _tree(table) == before
        assert _tree(staged) == new
    else:  # every folder had moved: completed, the replaced day deleted
        assert outcome == {str(journal): "completed"}
        assert _tree(table) == {**{k: v for k, v in before.items() if k.startswith("dt=2024-01-01")}, **new}
        assert not any(trash.rglob("*.parquet"))
    assert recover_publishes(ArrowStore(), str(staging)) == {}  # nothing left to recover


@pytest.mark.parametrize("kind", ["arrow", "hadoop"])
def test_an_interrupted_half_copied_rename_is_merged_back(tmp_path, kind, request):
    """An object store's rename stopped half way (some files moved, the rest not): the undo puts each
    file back, and a file both sides hold (copied, not yet deleted) is kept once. Through pyarrow and
    through Hadoop's filesystem (the spark engine's)."""
    from ipinsights.storage.files import write_json
    from ipinsights.storage.filesystems import ArrowStore, HadoopStore
    from ipinsights.storage.publish import recover_publish

    store = ArrowStore() if kind == "arrow" else HadoopStore(request.getfixturevalue("spark"))

    table, staged, trash, staging = _setup(tmp_path)
    before = _tree(table)
    old = trash / "0"
    # rename #0 (old 2024-01-02 -> trash) was copying: old-a moved, old-b copied but not yet deleted
    old.mkdir(parents=True)
    day = table / "dt=2024-01-02"
    (day / "old-a.parquet").rename(old / "old-a.parquet")
    (old / "old-b.parquet").write_bytes((day / "old-b.parquet").read_bytes())
    renames = [[str(day), str(old)], [str(staged / "dt=2024-01-02"), str(day)]]
    journal = staging / "_publish-r1.json"
    write_json(str(journal), {"renames": renames, "replaced": [str(old)], "next": 0})
    assert recover_publish(store, str(journal)) == "rolled back"
    assert _tree(table) == before and not old.exists() and not journal.exists()


LINE = '{ip} - {user} [{day}/Nov/2018:{hh}:15:00 +0000] "GET /login_success HTTP/1.1" 200 476 "-" "curl/8"'


def _log(path: Path, users: list[str], day: int = 10, hh: str = "09") -> str:
    path.write_text(
        "".join(LINE.format(ip=f"10.0.0.{i + 1}", user=u, day=day, hh=hh) + "\n" for i, u in enumerate(users))
    )
    return str(path)


def _ingest(spark, logs: list[str], output: Path, engine: str, run_id: str) -> dict:
    from ipinsights.core.config import load_config
    from ipinsights.ingest.job import IngestConfig, run_ingest

    cfg = {"inputs": ",".join(logs), "output": str(output), "engine": engine, "run_id": run_id}
    return run_ingest(spark, load_config(IngestConfig, "conf/ingest.yml", cfg))


def _per_file(spark, output: Path) -> dict[tuple[str, str], list[str]]:
    """(log file name, day) -> sorted entities: the table as the logs it came from."""
    from ipinsights.storage.events import read_events

    out: dict[tuple[str, str], list[str]] = {}
    for r in read_events(spark, str(output)).collect():
        out.setdefault((r.source_file.rsplit("/", 1)[1], r.dt), []).append(r.entity)
    return {k: sorted(v) for k, v in sorted(out.items())}


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["arrow", "spark"])
def test_runs_over_parts_of_a_day_keep_each_others_rows(spark, tmp_path, engine):
    """A day split across three runs, a rerun of one of them, then a late file: the table holds what one
    clean run over all the files writes."""
    logs = tmp_path / "logs"
    logs.mkdir()
    host1 = _log(logs / "host1.log", ["alice", "bob"])
    host2 = _log(logs / "host2.log", ["carol"])
    host3 = _log(logs / "host3.log", ["dave", "erin"], hh="23")
    (logs / "host3.log").write_text(
        (logs / "host3.log").read_text() + LINE.format(ip="::1", user="v6", day=11, hh="01") + "\n"
    )
    table = tmp_path / "events"
    for i, host in enumerate((host1, host2, host3)):
        _ingest(spark, [host], table, engine, f"part{i}")
    assert _per_file(spark, table)[("host1.log", "2018-11-10")] == ["alice", "bob"]  # not replaced by host2's run
    three = _per_file(spark, table)
    again = _ingest(spark, [host2], table, engine, "rerun")  # the same file again: nothing changes
    assert _per_file(spark, table) == three
    assert again["days_merged"] == ["2018-11-10"]
    late = _log(logs / "host4.log", ["frank"])
    _ingest(spark, [late], table, engine, "late")
    clean = tmp_path / "clean"
    _ingest(spark, [host1, host2, host3, late], clean, engine, "clean")
    assert _per_file(spark, table) == _per_file(spark, clean)
    assert len(_per_file(spark, table)) == 5  # 4 files on the 10th, host3's on the 11th too
    # host3 rewritten without its line of the 11th: that day loses host3's rows, the 10th gets its new ones.
    _log(logs / "host3.log", ["dave"], hh="23")
    redo = _ingest(spark, [host3], table, engine, "redo")
    assert redo["days_emptied"] == ["2018-11-11"]
    got = _per_file(spark, table)
    assert ("host3.log", "2018-11-11") not in got and got[("host3.log", "2018-11-10")] == ["dave"]
    assert got[("host1.log", "2018-11-10")] == ["alice", "bob"] and got[("host4.log", "2018-11-10")] == ["frank"]
    assert not (table / "dt=2018-11-11").exists()
    assert sorted(p.name for p in (tmp_path / "events_staging").iterdir()) == []  # no journal, no staging left


@pytest.mark.spark
def test_a_run_first_recovers_a_publish_killed_before_it(spark, tmp_path):
    """The state a kill between the renames leaves (the old day in the dead run's trash, the new one still
    staged, the journal): the next ingest puts the old day back before it runs, and nothing is lost."""
    from ipinsights.storage.files import write_json

    logs = tmp_path / "logs"
    logs.mkdir()
    table = tmp_path / "events"
    _ingest(spark, [_log(logs / "host1.log", ["alice", "bob"])], table, "arrow", "first")
    before = _per_file(spark, table)
    dead = tmp_path / "events_staging" / "run_id=dead"
    (dead / "events" / "dt=2018-11-10").mkdir(parents=True)
    (dead / "events" / "dt=2018-11-10" / "part-x.parquet").write_bytes(b"never published")
    (dead / "_replaced").mkdir()
    (table / "dt=2018-11-10").rename(dead / "_replaced" / "0")  # rename #0 done, then the kill
    renames = [
        [str(table / "dt=2018-11-10"), str(dead / "_replaced" / "0")],
        [str(dead / "events" / "dt=2018-11-10"), str(table / "dt=2018-11-10")],
    ]
    write_json(
        str(tmp_path / "events_staging" / "_publish-dead-events.json"),
        {"renames": renames, "replaced": [str(dead / "_replaced" / "0")], "next": 1},
    )
    _ingest(spark, [_log(logs / "host2.log", ["carol"])], table, "arrow", "next")
    assert _per_file(spark, table) == {**before, ("host2.log", "2018-11-10"): ["carol"]}


@pytest.mark.spark
def test_a_batch_transform_never_writes_the_daily_tables(spark, toy_model, tmp_path, capsys):
    """``score --input-csv`` without ``--date`` labelled the CSV as today and replaced today's production
    scores, flagged rows and report: now it writes under its own ``--output`` only, and needs one."""
    from ipinsights_jobs import score as score_job

    csv = tmp_path / "pairs.csv"
    csv.write_text("user_1,10.1.2.3\nnobody,8.8.8.8\n")
    prod = tmp_path / "prod"
    daily = [f"--scores={prod / 'scores'}", f"--flagged={prod / 'flagged'}", f"--reports={prod / 'reports'}"]
    common = ["--input-csv", str(csv), "--threshold", "0.5", f"--model={toy_model}", "--events=null", *daily]
    with pytest.raises(SystemExit) as exit_:
        score_job.main(common)  # no --output: refused before anything runs
    assert exit_.value.code == 2 and "--output" in capsys.readouterr().err
    assert score_job.main([*common, "--output", str(tmp_path / "batch"), "--flag_unseen=true"]) == 0
    assert not prod.exists()
    rows = spark.read.parquet(str(tmp_path / "batch" / "scores")).collect()
    assert sorted(r.entity for r in rows) == ["nobody", "user_1"]
    assert list((tmp_path / "batch" / "reports").glob("dt=*/report.html"))
    assert spark.read.parquet(str(tmp_path / "batch" / "flagged")).where("entity = 'nobody'").count() == 1


@pytest.mark.spark
@pytest.mark.slow
def test_a_day_written_by_one_engine_is_merged_by_the_other(spark, tmp_path):
    """Files of mixed logs (the spark engine's files_per_day shuffle) and Spark's own Parquet types: an
    arrow-engine run of one of the logs replaces only its rows; then the spark engine does the same."""
    from ipinsights.core.config import load_config
    from ipinsights.ingest.job import IngestConfig, run_ingest

    logs = tmp_path / "logs"
    logs.mkdir()
    host1 = _log(logs / "host1.log", ["alice", "bob"])
    host2 = _log(logs / "host2.log", ["carol"])
    table = tmp_path / "events"
    shuffled = {"inputs": f"{host1},{host2}", "output": str(table), "files_per_day": "1", "run_id": "mixed"}
    run_ingest(spark, load_config(IngestConfig, "conf/ingest.yml", shuffled))
    assert len(list((table / "dt=2018-11-10").glob("*.parquet"))) == 1  # both logs in one file
    clean = _per_file(spark, table)
    _log(logs / "host2.log", ["carol", "dan"])
    _ingest(spark, [host2], table, "arrow", "arrow-rerun")
    assert _per_file(spark, table) == {**clean, ("host2.log", "2018-11-10"): ["carol", "dan"]}
    _log(logs / "host1.log", ["alice"])
    _ingest(spark, [host1], table, "spark", "spark-rerun")
    assert _per_file(spark, table) == {
        ("host1.log", "2018-11-10"): ["alice"],
        ("host2.log", "2018-11-10"): ["carol", "dan"],
    }
