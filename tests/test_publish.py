"""Publishing day folders is all or nothing: a failure at any step leaves the table exactly as it was.

Faults are injected into the store's renames (the operation that fails on S3 copies and full disks):
each step of a publish fails in turn, also as a rename that copied part of a folder before failing,
and also when the rollback itself fails, where nothing may be deleted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ipinsights.storage.filesystems import ArrowStore
from ipinsights.storage.publish import PublishError, publish_partitions

DAYS_OLD = ("2024-01-01", "2024-01-02")
DAYS_NEW = ("2024-01-02", "2024-01-03")  # one day replaced, one day new


class FailingStore(ArrowStore):
    """An ArrowStore whose ``fail_at``-th rename (0-based) fails, optionally after a partial copy,
    and optionally every rename after it too (a filesystem that stays broken)."""

    def __init__(self, fail_at: int, partial: bool = False, stay_broken: bool = False) -> None:
        self.fail_at, self.partial, self.stay_broken = fail_at, partial, stay_broken
        self.renames = 0

    def rename(self, src: str, dst: str) -> None:
        n = self.renames
        self.renames += 1
        if n == self.fail_at or (self.stay_broken and n > self.fail_at):
            if self.partial:  # an S3 "rename" that copied one object, then failed
                first = sorted(Path(src).rglob("*.parquet"))[0]
                (Path(dst) / first.name).parent.mkdir(parents=True, exist_ok=True)
                (Path(dst) / first.name).write_bytes(first.read_bytes())
            raise OSError(f"injected failure of rename #{n}: {src} -> {dst}")
        super().rename(src, dst)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    table, staged, trash = tmp_path / "events", tmp_path / "staging" / "events", tmp_path / "staging" / "_replaced"
    for d in DAYS_OLD:
        (table / f"dt={d}").mkdir(parents=True)
        (table / f"dt={d}" / "old-a.parquet").write_bytes(f"old {d} a".encode())
        (table / f"dt={d}" / "old-b.parquet").write_bytes(f"old {d} b".encode())
    for d in DAYS_NEW:
        (staged / f"dt={d}").mkdir(parents=True)
        (staged / f"dt={d}" / "new-a.parquet").write_bytes(f"new {d} a".encode())
        (staged / f"dt={d}" / "new-b.parquet").write_bytes(f"new {d} b".encode())
    return table, staged, trash


def test_a_clean_publish_replaces_only_its_days(tmp_path):
    table, staged, trash = _setup(tmp_path)
    new = _tree(staged)
    publish_partitions(ArrowStore(), str(staged), str(table), DAYS_NEW, str(trash))
    assert {k: v for k, v in _tree(table).items() if not k.startswith("dt=2024-01-01")} == new
    assert sorted(_tree(table)) == ["dt=2024-01-01/old-a.parquet", "dt=2024-01-01/old-b.parquet", *sorted(new)]
    assert not any(trash.rglob("*.parquet"))  # the replaced day is gone only after the publish succeeded


# A publish of DAYS_NEW renames: #0 old 01-02 to trash, #1 new 01-02 in, #2 new 01-03 in.
@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("fail_at", [0, 1, 2])
def test_a_failed_publish_leaves_the_table_as_it_was(tmp_path, fail_at, partial):
    table, staged, trash = _setup(tmp_path)
    before, new = _tree(table), _tree(staged)
    store = FailingStore(fail_at, partial=partial and fail_at > 0)
    with pytest.raises(OSError, match="injected failure"):
        publish_partitions(store, str(staged), str(table), DAYS_NEW, str(trash))
    assert _tree(table) == before  # the old day is back, no new day half-published
    assert _tree(staged) == new  # what was staged is intact: a rerun publishes it
    publish_partitions(ArrowStore(), str(staged), str(table), DAYS_NEW, str(trash))  # the rerun
    assert {k: v for k, v in _tree(table).items() if k.startswith(("dt=2024-01-02", "dt=2024-01-03"))} == new


def test_a_failed_rollback_deletes_nothing_and_says_where_the_data_is(tmp_path):
    table, staged, trash = _setup(tmp_path)
    old_day = _tree(table / "dt=2024-01-02")
    store = FailingStore(1, stay_broken=True)  # the new day's rename fails, and so does every undo
    with pytest.raises(PublishError) as info:
        publish_partitions(store, str(staged), str(table), DAYS_NEW, str(trash))
    kept = [Path(p) for p in info.value.kept]
    assert any(p.exists() and _tree(p) == old_day for p in kept), info.value.kept


@pytest.mark.spark
def test_overlapping_writes_of_two_threads_restore_the_sessions_settings(spark):
    """Two runs sharing a session (threads of one driver) whose writes overlap: the first in is not the
    last out, and the settings the session had before either come back once both are done."""
    import threading

    from ipinsights.storage.publish import PARTITIONED_WRITE_CONF, partitioned_write_settings

    key = "spark.sql.maxConcurrentOutputFileWriters"
    assert spark.conf.get(key, None) is None
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, str | None] = {}

    def a() -> None:
        with partitioned_write_settings(spark, {key: "32"}):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b() -> None:
        a_in.wait(10)
        with partitioned_write_settings(spark):
            b_in.set()
            a_out.wait(10)
            seen["b"] = spark.conf.get(key, None)  # a left, b still writing: its setting is kept

    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert seen["b"] == PARTITIONED_WRITE_CONF[key]
    assert spark.conf.get(key, None) is None
