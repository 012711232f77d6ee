"""Overlapping runs and retries lose nothing: the jobs under leases, with two runs at once (tests/concurrency.py).

Each case forces its interleaving with hooks (a run stops at one of its own commit steps or fences; the store's
clock jumps to expire a silent lease), never by sleeping. Then a few random trials per job of the concurrent
fault suite (bench/concurrency.py runs many): two runs started together into one output, one of them crashed,
frozen or held at a random point. Each prints ``trials, runs, waits, takeovers, fenced publishes, rows lost,
rows duplicated``.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from concurrency import (
    DAY,
    Runs,
    Tally,
    compare,
    four_days,
    ingest_job,
    score_job,
    score_rows,
    small_model,
    train_job,
    trial,
    write_log,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def events(spark, tmp_path_factory):
    return four_days(tmp_path_factory.mktemp("events"))


@pytest.fixture(scope="module")
def model(spark, events, tmp_path_factory):
    return small_model(events, tmp_path_factory.mktemp("model") / "run")


@pytest.fixture(scope="module")
def ingest(spark, tmp_path_factory):
    return ingest_job(spark, tmp_path_factory.mktemp("ingest"), ttl=10.0)


@pytest.fixture(scope="module")
def score(spark, events, model, tmp_path_factory):
    return score_job(spark, events, model, tmp_path_factory.mktemp("score"), ttl=10.0)


@pytest.fixture(scope="module")
def train(spark, events, tmp_path_factory):
    return train_job(spark, events, tmp_path_factory.mktemp("train"), ttl=10.0)


def _two(runs: Runs, job, root: Path, fault: str, at: int, first: int = 0):
    """Run ``first`` of ``job`` into ``root`` until it stops at its fault point, then the other one."""
    a = runs.start(f"r{first}", lambda: job.run(root, first), fault, at)
    runs.wait_for(lambda: a.stopped or a.done, "the first run reaches its point")
    assert a.stopped, f"the first run never reached {fault} {at}"
    b = runs.start(f"r{1 - first}", lambda: job.run(root, 1 - first))
    return a, b


@pytest.mark.parametrize("at", [1, 2], ids=["before-its-publish", "between-its-renames"])
def test_ingest_runs_over_one_day_do_not_interleave_their_rewrite(ingest, tmp_path, at):
    """Two ingests over different files of one day (one file in common), the first held after it read the day's
    other rows (step 1: writing its journal) or between its renames (step 2): the second waits instead of
    publishing the day meanwhile (today: the first then publishes the day without the second's rows) or
    undoing the first's live publish from its journal. Both runs' rows are kept."""
    ingest.prepare(tmp_path)
    with Runs() as runs:
        a, b = _two(runs, ingest, tmp_path, "hold", at)
        runs.settle(a, [b])
    assert a.error is None and b.error is None
    assert b.waited
    assert ingest.check(tmp_path) == (0, 0)


def test_an_ingest_that_lost_its_lease_mid_publish_publishes_nothing_more(ingest, tmp_path):
    """The first ingest freezes between the renames of its publish (its heartbeat stops too); the second takes
    its lease over once the store's clock passes the TTL, undoes the half publish and publishes its own days;
    the first, resumed, is fenced (LeaseLostError, exit 4): it moves nothing more. Its retry completes the table."""
    from ipinsights.storage.lease import LeaseLostError

    ingest.prepare(tmp_path)
    with Runs() as runs:
        a, b = _two(runs, ingest, tmp_path, "freeze", 2)  # before its second rename
        runs.settle(a, [b], 10.0)
        assert b.error is None and b.takeovers >= 1
        rows_b = ingest.check(tmp_path)
        runs.finish(a)
    assert isinstance(a.error, LeaseLostError)
    assert ingest.check(tmp_path) == rows_b  # the fenced run changed nothing
    ingest.run(tmp_path, 0)  # the scheduler's retry
    assert ingest.check(tmp_path) == (0, 0)


def test_the_same_day_scored_twice_at_once_is_one_run_s_output(score, tmp_path):
    """Two scoring runs of one day (different thresholds), the first held between the renames of its publish
    (its scores in, its flagged rows and cases not yet): the second waits, then replaces the day whole. Today
    the second undid the first's live publish of the scores and published its own, then the first moved its
    flagged rows and cases in: the day's tables came from two runs."""
    score.prepare(tmp_path)
    with Runs() as runs:
        a, b = _two(runs, score, tmp_path, "hold", 3, first=1)  # (threshold 0: all three tables have rows)
        runs.settle(a, [b])
    assert a.error is None and b.error is None and b.waited
    assert score.check(tmp_path) == (0, 0)


def test_a_parallel_backfill_publishes_every_day_as_a_serial_one(score, tmp_path):
    """Four days scored by four runs at once (one held between the renames of its publish while the others
    run: they write other days, so none waits for it) publish exactly what the same days scored one after
    another do. Today the others, starting, undid the held run's live publish from its journal."""
    days = ["2026-10-10", "2026-10-11", "2026-10-12", DAY]
    serial = tmp_path / "serial"
    score.prepare(serial)
    for d in days:
        score.run(serial, 1, [d])
    root = tmp_path / "parallel"
    score.prepare(root)
    with Runs() as runs:
        held = runs.start("d0", lambda: score.run(root, 1, [days[0]]), "hold", 3)
        runs.wait_for(lambda: held.stopped, "the first day's run is half way")
        others = [runs.start(f"d{i}", lambda d=d: score.run(root, 1, [d])) for i, d in enumerate(days[1:], 1)]
        runs.settle(held, others)
    assert all(r.error is None for r in runs.runs.values()), [r.error for r in runs.runs.values()]
    assert not [t for r in others for t in r.waited_for if "/dt=" in t]  # (a sidecar's lease, briefly, at most)
    want = score_rows(serial)
    assert {row[1] for row in want} == set(days) and any(row[0] == "cases" for row in want)
    assert compare(score_rows(root), want) == (0, 0)


def test_a_training_run_started_twice_into_one_output_waits(train, tmp_path):
    """Two training runs into one --output, the first held at a checkpoint: the second waits, then trains the
    whole run again. Today it rewrote the output's work/ under the first (whose next epoch then read
    files that were gone, or a mix) and the two runs' model, checkpoints and metrics mixed."""
    train.prepare(tmp_path)
    with Runs() as runs:
        a, b = _two(runs, train, tmp_path, "hold", 3)
        runs.settle(a, [b])
    assert a.error is None and b.error is None and b.waited
    assert train.check(tmp_path) == (0, 0)


def test_a_run_told_not_to_wait_exits_4_naming_the_holder(spark, tmp_path, capsys):
    """on_busy: fail: a run that finds what it writes held exits 4 at once, its message naming the holder."""
    from ipinsights.core.config import LeaseOptions
    from ipinsights.storage.lease import Leases
    from ipinsights_jobs import ingest

    log = write_log(tmp_path / "logs" / "a.log", [(13, "08")], users=2)
    holder = Leases("the-holder", LeaseOptions())
    holder.acquire([str(tmp_path / "events" / f"dt={DAY}")])
    try:
        args = [f"--inputs={log}", f"--output={tmp_path / 'events'}", "--engine=arrow", "--on_busy=fail"]
        assert ingest.main(args) == 4
    finally:
        holder.release()
    assert "run the-holder (host " in capsys.readouterr().err
    assert ingest.main(args) == 0


@pytest.mark.parametrize("name", ["ingest", "score", "train"])
def test_concurrent_trials(name, request, tmp_path):
    """A crash, a freeze and a hold, each in one of two runs started together (the run and the point drawn at
    random; the crashed or fenced one retried): nothing lost, nothing twice, no output from two runs."""
    job = request.getfixturevalue(name)
    if not job.steps:
        job.count(tmp_path / "count")
    tally = Tally(name)
    rng = random.Random(32)
    # (score's hold is test_the_same_day_scored_twice_at_once_is_one_run_s_output: its trials are the slowest)
    for i, fault in enumerate(("crash", "freeze") if name == "score" else ("crash", "freeze", "hold")):
        trial(job, tmp_path / f"t{i}", rng, tally, 10.0, fault)
        shutil.rmtree(tmp_path / f"t{i}", ignore_errors=True)
    print(tally.line())
    assert not tally.failures, tally.failures
    assert (tally.lost, tally.duplicated) == (0, 0)
