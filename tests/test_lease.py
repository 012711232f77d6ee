"""Leases (ipinsights.storage.lease) and the publish that goes through them (ipinsights.storage.publish.Publisher).

Every interleaving is forced with hooks (tests/concurrency.py: a run stops at its own step or fence, the
store's clock jumps), never by sleeping. S3's conditional writes are checked in tests/test_s3.py.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from concurrency import Runs

from ipinsights.core.config import ConfigError, LeaseOptions, load_config
from ipinsights.storage.filesystems import ArrowStore
from ipinsights.storage.lease import LeaseBusyError, LeaseLostError, Leases, LocalLeaseStore, lease_store, lease_uri
from ipinsights.storage.publish import JOURNAL_PREFIX, Publisher

FAIL = LeaseOptions(on_busy="fail", ttl_seconds=5.0)
WAIT = LeaseOptions(on_busy="wait", ttl_seconds=5.0)


def test_lease_objects_live_beside_what_they_guard_outside_every_table(tmp_path):
    assert lease_uri(f"{tmp_path}/lake/events/dt=2026-10-11") == f"{tmp_path}/lake/_leases/events/dt=2026-10-11.lease"
    assert lease_uri(f"{tmp_path}/runs/m1/") == f"{tmp_path}/runs/_leases/m1.lease"
    assert lease_uri("s3://b/lake/scores/dt=2026-10-11") == "s3://b/lake/_leases/scores/dt=2026-10-11.lease"
    assert lease_uri("s3://b/models/m.calibration.json") == "s3://b/models/_leases/m.calibration.json.lease"


def test_the_settings_are_checked():
    assert load_config(LeaseOptions, None, {"on_busy": "fail", "wait_minutes": "0"}).on_busy == "fail"
    with pytest.raises(ConfigError, match="on_busy"):
        LeaseOptions(on_busy="skip")  # never a silent skip
    with pytest.raises(ConfigError, match="ttl_seconds"):
        LeaseOptions(ttl_seconds=0)


def test_the_local_store_is_a_compare_and_swap(tmp_path):
    store, uri = LocalLeaseStore(), str(tmp_path / "_leases" / "t.lease")
    assert store.read(uri) is None
    first = store.create(uri, {"owner": "a", "write": "1"})
    assert first == "1" and store.create(uri, {"owner": "b", "write": "2"}) is None  # exclusive
    second = store.swap(uri, first, {"owner": "a", "write": "3"})
    assert second == "3"
    assert store.swap(uri, first, {"owner": "b", "write": "4"}) is None  # a stale token swaps nothing
    assert store.swap(uri, "3", None) == "" and store.read(uri) is None  # given back
    assert store.swap(uri, "3", {"owner": "a", "write": "5"}) is None  # nor revives it


def test_a_second_run_fails_at_once_naming_the_holder(tmp_path):
    target = str(tmp_path / "events" / "dt=2026-10-11")
    with Leases("first", FAIL) as first:
        first.acquire([target])
        with pytest.raises(LeaseBusyError, match=r"run first .*host .*started ") as info:
            Leases("second", FAIL).acquire([target])
        assert info.value.holder["run_id"] == "first"
    with Leases("third", FAIL) as third:  # given back at the end of the block
        third.acquire([target])


def test_a_second_run_waits_logging_the_holder_then_goes_on(tmp_path, caplog):
    """The second run waits (logging who holds the lease); the first gives it back when it sees that."""
    target = str(tmp_path / "events" / "dt=2026-10-11")
    first = Leases("first", WAIT)
    first.acquire([target])
    with Runs() as runs, caplog.at_level(logging.INFO, "ipinsights.storage.lease"):
        second = runs.start("second", lambda: Leases("second", WAIT).acquire([target]))
        runs.wait_for(lambda: second.waiting, "the second run waits")
        first.release()
        runs.wait_for(lambda: second.done, "the second run")
    assert second.error is None and second.result is True
    assert any(r.getMessage().startswith(f"waiting for {target}: held by run first (host ") for r in caplog.records)


def test_a_wait_has_an_end(tmp_path):
    target = str(tmp_path / "runs" / "m1")
    with Leases("first", WAIT) as first:
        first.acquire([target])
        with pytest.raises(LeaseBusyError, match="after waiting 0 minutes"):
            Leases("second", LeaseOptions(wait_minutes=0.0)).acquire([target])


def test_expiry_is_judged_on_the_store_clock(tmp_path):
    """A lease whose holder stopped renewing it is taken over once the store's clock passes its TTL, not before."""
    target = str(tmp_path / "events" / "dt=2026-10-11")
    options = LeaseOptions(on_busy="fail", ttl_seconds=50.0)
    silent = Leases("silent", options)
    silent.acquire([target])
    silent._stop.set()  # its heartbeat stops, as its process would
    with Runs() as runs:
        runs.clock.offset = 40.0  # within the TTL: still its
        with pytest.raises(LeaseBusyError):
            Leases("next", options).acquire([target])
        runs.clock.offset = 60.0
        taker = Leases("next", options)
        assert taker.acquire([target]) and taker.taken_over[target]["run_id"] == "silent"
        taker.release()


def test_a_silent_lease_is_taken_over_and_its_holder_fenced(tmp_path):
    target = str(tmp_path / "runs" / "m1")
    holder = Leases("holder", WAIT)
    holder.acquire([target])
    ref = holder.ref(target)
    with Runs() as runs:
        runs.expire(5.0)
        taker = Leases("taker", FAIL)
        taker.acquire([target])
    with pytest.raises(LeaseLostError, match="now held by run taker"):
        holder.renew()
    with pytest.raises(LeaseLostError):
        ref()  # a training rank's renewal too
    holder.release()  # gives back nothing that is not its own
    assert lease_store(lease_uri(target)).read(lease_uri(target)).data["run_id"] == "taker"
    taker.release()


def test_the_lease_of_a_process_that_died_on_this_host_is_taken_over_at_once(tmp_path):
    target = str(tmp_path / "events" / "dt=2026-10-11")
    code = f"from ipinsights.storage.lease import Leases; import os; Leases('dead').acquire([{target!r}]); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True)  # exits holding it (no release, no heartbeat)
    taker = Leases("next", FAIL)
    assert taker.acquire([target]) and taker.taken_over[target]["run_id"] == "dead"
    taker.release()


def test_overlapping_sets_are_taken_in_order(tmp_path):
    """Two runs wanting {a, b} and {b, a}: taken in sorted order, they never wait for each other in a circle."""
    a, b = (str(tmp_path / "t" / f"dt=2026-10-1{i}") for i in (1, 2))
    order: list[str] = []
    barrier = threading.Barrier(2)

    def run(name: str, targets: list[str]) -> None:
        leases = Leases(name, WAIT)
        barrier.wait()
        leases.acquire(targets)
        order.append(name)
        leases.release()

    threads = [threading.Thread(target=run, args=(n, t)) for n, t in (("x", [a, b]), ("y", [b, a]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(order) == ["x", "y"]


# ---- the publish under leases -------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _staged(root: Path, run: str, days: list[str]) -> Path:
    staged = root / "events_staging" / f"run_id={run}" / "events"
    for d in days:
        (staged / f"dt={d}").mkdir(parents=True)
        (staged / f"dt={d}" / f"{run}.parquet").write_bytes(f"{run} {d}".encode())
    return staged


def _publish(root: Path, run: str, days: list[str], options: LeaseOptions = WAIT) -> None:
    """A run's publish of its staged days, as the jobs do it."""
    staged = _staged(root, run, days)
    with Publisher(ArrowStore(), str(root / "events_staging"), run, options) as pub:
        pub.hold(str(root / "events" / f"dt={d}") for d in days)
        moves = [(str(staged / f"dt={d}"), str(root / "events" / f"dt={d}")) for d in days]
        journal = str(root / "events_staging" / f"{JOURNAL_PREFIX}{run}.json")
        pub.replace_folders(moves, str(staged.parent / "_replaced"), journal)
    ArrowStore().delete(str(staged.parent))  # (not when fenced: the run that took over settles it)


DAYS = ["2026-10-11", "2026-10-12"]


def test_a_live_run_publish_is_never_adopted(tmp_path):
    """A run held between the renames of its publish (alive: it renews its lease): a second run over the
    same days waits instead of finishing or undoing the first one's publish, then replaces both days."""
    _publish(tmp_path, "old", DAYS)
    with Runs() as runs:
        first = runs.start("first", lambda: _publish(tmp_path, "first", DAYS), "hold", 3)  # at its 2nd rename
        runs.wait_for(lambda: first.stopped, "the first run is half way")
        second = runs.start("second", lambda: _publish(tmp_path, "second", DAYS))
        runs.settle(first, [second])
    assert first.error is None and second.error is None and second.waited
    assert _tree(tmp_path / "events") == {f"dt={d}/second.parquet": f"second {d}".encode() for d in DAYS}
    assert not list((tmp_path / "events_staging").iterdir())


def test_a_run_fenced_mid_publish_publishes_nothing_more(tmp_path):
    """A run frozen between the renames of its publish (its heartbeat stopped too) loses its lease to the next
    run, which undoes the half publish from the journal and publishes its own; the frozen run, resumed, is
    fenced before its next rename: it moves nothing more, and undoes nothing."""
    _publish(tmp_path, "old", DAYS)
    with Runs() as runs:
        frozen = runs.start("frozen", lambda: _publish(tmp_path, "frozen", DAYS), "freeze", 3)  # before rename 3
        runs.wait_for(lambda: frozen.stopped, "the frozen run is half way")
        other = runs.start("other", lambda: _publish(tmp_path, "other", DAYS))
        runs.settle(frozen, [other], WAIT.ttl_seconds)
        assert other.error is None and other.takeovers == len(DAYS)
        runs.finish(frozen)
    assert isinstance(frozen.error, LeaseLostError)
    assert _tree(tmp_path / "events") == {f"dt={d}/other.parquet": f"other {d}".encode() for d in DAYS}
    assert not (tmp_path / "events_staging" / "run_id=frozen").exists()  # cleared by the run that took over


def test_a_crashed_publish_is_settled_by_the_run_that_takes_its_lease(tmp_path):
    """A run dead mid-publish (crashed at its 3rd step: the old day moved out, the new one not in): the next
    run over one of its days takes over, puts the old day back (rolls back) and publishes its own."""
    _publish(tmp_path, "old", DAYS)
    before = _tree(tmp_path / "events")
    with Runs() as runs:
        dead = runs.start("dead", lambda: _publish(tmp_path, "dead", DAYS), "crash", 3)
        runs.wait_for(lambda: dead.stopped, "the crash")
        assert _tree(tmp_path / "events") != before  # half published
        runs.expire(WAIT.ttl_seconds)
        nxt = runs.start("next", lambda: _publish(tmp_path, "next", DAYS[1:]))
        runs.wait_for(lambda: nxt.done, "the next run")
    assert nxt.error is None and nxt.takeovers >= 1
    assert _tree(tmp_path / "events") == {
        f"dt={DAYS[0]}/old.parquet": f"old {DAYS[0]}".encode(),  # put back
        f"dt={DAYS[1]}/next.parquet": f"next {DAYS[1]}".encode(),
    }
    assert not [p.name for p in (tmp_path / "events_staging").iterdir()]  # journal settled, staging cleared


@pytest.mark.spark
def test_the_hadoop_store_swaps_numbered_versions(spark, tmp_path):
    """HDFS has no conditional overwrite: a swap is an exclusive create of the next version (here through
    Hadoop's local filesystem, which Spark's jobs use for file: paths)."""
    from ipinsights.storage.lease import HadoopLeaseStore

    store, uri = HadoopLeaseStore(spark), f"file:{tmp_path}/_leases/t.lease"
    assert store.read(uri) is None
    assert store.create(uri, {"owner": "a", "write": "1"}) == "1"
    assert store.create(uri, {"owner": "b", "write": "2"}) is None
    assert store.swap(uri, "1", {"owner": "a", "write": "3"}) == "2"
    assert store.swap(uri, "1", {"owner": "b", "write": "4"}) is None  # stale
    assert store.read(uri).data["write"] == "3" and abs(store.now(uri) - store.read(uri).mtime) < 60
    assert store.swap(uri, "2", None) == "3" and store.read(uri).data == {}  # given back: an empty version
