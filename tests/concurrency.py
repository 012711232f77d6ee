"""Runs at once, with faults injected into one of them: the harness of the concurrent fault suite.

Used by ``tests/test_concurrency.py`` (the forced interleavings, and a few trials per job in CI) and
``bench/concurrency.py`` (>= 20 trials per job). Runs are threads of this process sharing its Spark
session (a thread is named for its run); only this harness patches anything, the library has no hooks.
A run may be stopped at one point of its own:

* ``crash`` at its k-th commit step (a store rename, the delete of replaced data, an atomic file replace):
  it never goes on and its heartbeat stops, as a SIGKILLed driver. The scheduler retries it later.
* ``freeze`` at its k-th fence (the renewal of its leases before a publish move): it stops and its
  heartbeat with it (a long GC pause, a network partition), and goes on when :meth:`Runs.resume` says:
  it must find its lease taken over and publish nothing more.
* ``hold`` at its k-th commit step, its heartbeat alive (a slow run): it goes on when the other runs
  have finished or are waiting for a lease.

A run stopped for good, or a frozen one, lets its leases expire by the store clock's jump
(:class:`ipinsights.storage.lease.ShiftedClock`), never by sleeping.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TIMEOUT = 600.0
_DRAWING = threading.Lock()
_DRAWING_BY: list[str] = []  # the run that holds it  # a trial that has not settled by then is a failure (never a hang)


@dataclass
class Run:
    """One run (a thread) and what happened to it."""

    name: str
    fault: str | None = None  # crash | freeze | hold
    at: int = 0  # the step (crash, hold) or fence (freeze) it stops at, 1-based
    steps: int = 0
    fences: int = 0
    stopped: bool = False  # at its fault point now (or for good)
    waiting: bool = False  # inside a lease wait that logged its holder
    waited: bool = False
    waited_for: list[str] = field(default_factory=list)  # the targets of its waits
    trace: list[str] = field(default_factory=list)  # its commit steps, in order
    takeovers: int = 0
    done: bool = False
    error: BaseException | None = None
    result: Any = None
    resume: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class Runs:
    """The runs of one trial (or test) and the hooks that stop them; use as a context manager."""

    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}
        self.cond = threading.Condition()
        self.by_leases: dict[int, str] = {}  # id(Leases) -> run
        self.by_owner: dict[str, str] = {}  # lease owner nonce -> run
        self.undo: list[Callable[[], None]] = []
        self.clock: Any = None

    # ---- hooks --------------------------------------------------------------------------------------

    def _run(self) -> Run | None:
        return self.runs.get(threading.current_thread().name)

    def _stop_here(self, run: Run, point: str) -> None:
        drawing = [threading.current_thread().name] == _DRAWING_BY
        if drawing:  # (the harness's own lock: a stopped run must not keep the others from drawing)
            _DRAWING_BY.clear()
            _DRAWING.release()
        with self.cond:
            run.stopped = True
            self.cond.notify_all()
        if run.fault == "crash":
            threading.Event().wait()  # for good: nothing after it runs (a daemon thread)
        run.resume.wait()
        with self.cond:
            run.stopped = False
        if drawing:
            _DRAWING.acquire()
            _DRAWING_BY.append(threading.current_thread().name)

    def _step(self, what: str, detail: object = "") -> None:
        run = self._run()
        if run is None:
            return
        run.steps += 1
        run.trace.append(f"{what} {detail}")
        if run.fault in ("crash", "hold") and run.steps == run.at:
            self._stop_here(run, what)

    def _fence(self) -> None:
        run = self._run()
        if run is None:
            return
        run.fences += 1
        if run.fault == "freeze" and run.fences == run.at:
            self._stop_here(run, "fence")

    def _silent(self, name: str | None) -> bool:
        """Whether run ``name``'s heartbeat is dead now (crashed, or frozen)."""
        run = self.runs.get(name or "")
        return run is not None and run.stopped and run.fault in ("crash", "freeze")

    def __enter__(self) -> Runs:
        from ipinsights.storage import filesystems

        def wrap(owner: Any, attr: str, before: Callable[..., None]) -> None:
            real = getattr(owner, attr)

            def wrapped(*args: Any, **kwargs: Any) -> Any:
                before(*args)
                return real(*args, **kwargs)

            setattr(owner, attr, wrapped)
            self.undo.append(lambda: setattr(owner, attr, real))

        for store in (filesystems.ArrowStore, filesystems.HadoopStore):
            wrap(store, "rename", lambda _s, src, dst: self._step("rename", f"{src} -> {dst}"))
            wrap(store, "delete", lambda _s, uri: self._step("delete", uri) if "_replaced" in str(uri) else None)
        wrap(os, "replace", lambda *a: self._step("replace", a[-1]))
        # Matplotlib's text parser is not thread-safe: runs here are threads of one process (in production,
        # processes), so their reports are drawn one at a time.
        from ipinsights.score import spark_job

        real_report = spark_job.write_day_report

        def report(*args: Any, **kwargs: Any) -> Any:
            with _DRAWING:
                _DRAWING_BY.append(threading.current_thread().name)
                try:
                    return real_report(*args, **kwargs)
                finally:
                    _DRAWING_BY.clear()

        spark_job.write_day_report = report  # type: ignore[assignment]
        self.undo.append(lambda: setattr(spark_job, "write_day_report", real_report))
        self.clock = _NoClock()
        try:
            from ipinsights.storage import lease
        except ImportError:  # code without leases (the suite shows what it loses)
            return self
        real_acquire, real_renew, real_call = lease.Leases.acquire, lease.Leases.renew, lease.LeaseRef.__call__
        real_take = lease.Leases._take
        runs = self

        def acquire(self: Any, *args: Any, **kwargs: Any) -> Any:
            run = runs._run()
            if run is not None:
                runs.by_leases[id(self)] = run.name
                runs.by_owner[self.owner] = run.name
            return real_acquire(self, *args, **kwargs)

        def renew(self: Any) -> None:
            if runs._run() is not None:
                runs._fence()
            elif runs._silent(runs.by_leases.get(id(self))):
                return  # the heartbeat of a stopped run: it renews nothing
            real_renew(self)

        def call(self: Any) -> None:
            if runs._run() is not None:
                runs._fence()
            real_call(self)

        def take(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return real_take(self, *args, **kwargs)
            finally:
                run = runs._run()
                if run is not None:
                    with runs.cond:
                        run.waiting = False

        lease.Leases.acquire, lease.Leases.renew, lease.LeaseRef.__call__ = acquire, renew, call  # type: ignore[method-assign]
        lease.Leases._take = take  # type: ignore[method-assign]
        self.undo.append(lambda: setattr(lease.Leases, "acquire", real_acquire))
        self.undo.append(lambda: setattr(lease.Leases, "renew", real_renew))
        self.undo.append(lambda: setattr(lease.LeaseRef, "__call__", real_call))
        self.undo.append(lambda: setattr(lease.Leases, "_take", real_take))

        handler, logger = _Watcher(self), logging.getLogger("ipinsights.storage.lease")
        level = logger.level
        logger.setLevel(logging.INFO)  # (the wait lines are INFO)
        logger.addHandler(handler)
        self.undo.append(lambda: (logger.removeHandler(handler), logger.setLevel(level)))
        self.clock = lease.ShiftedClock()
        old = lease.set_clock(self.clock)
        self.undo.append(lambda: lease.set_clock(old))
        return self

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self.undo):
            undo()
        for run in self.runs.values():  # a frozen or held run left over goes on, to its end (a crashed one never)
            run.resume.set()

    # ---- runs ---------------------------------------------------------------------------------------

    def start(self, name: str, body: Callable[[], Any], fault: str | None = None, at: int = 0) -> Run:
        """Start ``body`` as run ``name`` (a daemon thread: a crashed run never ends)."""
        run = Run(name, fault, at)

        def main() -> None:
            try:
                run.result = body()
            except BaseException as exc:
                run.error = exc
            finally:
                with self.cond:
                    run.done = True
                    self.cond.notify_all()

        self.runs[name] = run
        run.thread = threading.Thread(target=main, name=name, daemon=True)
        run.thread.start()
        return run

    def wait_for(self, test: Callable[[], bool], what: str) -> None:
        """Block until ``test()`` holds (checked whenever a run stops, waits or ends)."""
        deadline = time.monotonic() + TIMEOUT
        with self.cond:
            while not test():
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{what}: {self.runs}")
                self.cond.wait(timeout=max(0.0, min(5.0, deadline - time.monotonic())))

    def settle(self, faulted: Run, others: list[Run], ttl: float | None = None) -> None:
        """Let ``others`` finish around ``faulted``: a held run goes on once they all are done or waiting;
        a crashed or frozen one lets its leases expire (the clock jumps) when one of them waits for it."""

        def quiet() -> bool:
            return all(o.done or o.waiting for o in others)

        self.wait_for(lambda: faulted.done or (faulted.stopped and quiet()), "the faulted run stops")
        if faulted.stopped and faulted.fault == "hold":
            faulted.resume.set()
        elif faulted.stopped:
            if any(o.waiting for o in others):
                self.expire(ttl)  # its leases are silent: now they expired
            self.wait_for(lambda: all(o.done for o in others), "the other runs finish")
            return
        self.wait_for(lambda: all(o.done for o in [faulted, *others]), "the runs finish")

    def expire(self, ttl: float | None = None) -> None:
        """Move the store's clock on past the TTL ``ttl`` (None: the default): every silent lease expires."""
        self.clock.offset += 10 * (ttl or 120.0)

    def finish(self, run: Run) -> None:
        """Let a frozen run go on, to its end."""
        run.resume.set()
        self.wait_for(lambda: run.done, f"{run.name} finishes")


class _NoClock:
    offset = 0.0


def lease_lost() -> type[BaseException]:
    """:class:`ipinsights.storage.lease.LeaseLostError` (a stand-in where the code has no leases)."""
    try:
        from ipinsights.storage.lease import LeaseLostError
    except ImportError:
        return type("NoLeases", (Exception,), {})
    return LeaseLostError


class _Watcher(logging.Handler):
    """Marks the run whose thread logged a lease wait or a takeover."""

    def __init__(self, runs: Runs) -> None:
        super().__init__(logging.DEBUG)
        self.runs = runs

    def emit(self, record: logging.LogRecord) -> None:
        run = self.runs.runs.get(threading.current_thread().name)
        if run is None:
            return
        msg = record.getMessage()
        with self.runs.cond:
            if msg.startswith("waiting for "):
                run.waiting = run.waited = True
                run.waited_for.append(msg[len("waiting for ") :].split(": held by ", 1)[0])
            elif msg.startswith("took over the lease"):
                run.takeovers += 1
            self.runs.cond.notify_all()


def compare(got: collections.Counter, want: collections.Counter) -> tuple[int, int]:
    """(rows lost, rows duplicated or foreign) of ``got`` against ``want``."""
    return sum((want - got).values()), sum((got - want).values())


@dataclass
class Tally:
    """The figures of a series of trials of one job."""

    job: str
    trials: int = 0
    runs: int = 0
    waits: int = 0
    takeovers: int = 0
    fenced: int = 0
    crashes: int = 0
    lost: int = 0
    duplicated: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.job}: trials {self.trials}, runs {self.runs}, crashes {self.crashes}, waits {self.waits}, "
            f"takeovers {self.takeovers}, fenced publishes {self.fenced}, rows lost {self.lost}, "
            f"rows duplicated {self.duplicated}"
        )


@dataclass
class Job:
    """How a trial runs one job: ``run(root, variant)`` runs it into ``root`` (variants 0 and 1: the two runs
    differ where their outputs may, e.g. their thresholds), ``check(root)`` says how far what is there is from
    what one clean run writes (rows lost, rows duplicated or foreign: a mix of two runs' outputs counts),
    ``prepare(root)`` makes a fresh ``root``."""

    name: str
    prepare: Callable[[Any], None]
    run: Callable[[Any, int], Any]
    check: Callable[[Any], tuple[int, int]]
    steps: int = 0  # commit steps of a clean run (crash and hold points are drawn from 1..steps)
    fences: int = 0  # fences of a clean run (freeze points)

    def count(self, root: Any) -> Job:
        """Count the steps and fences of a clean run of variant 0 into ``root``."""
        self.prepare(root)
        with Runs() as runs:
            run = runs.start("clean", lambda: self.run(root, 0))
            runs.wait_for(lambda: run.done, "the clean run")
        if run.error is not None:
            raise run.error
        self.steps, self.fences = run.steps, run.fences
        return self


def trial(
    job: Job, root: Any, rng: random.Random, tally: Tally, ttl: float | None = None, fault: str | None = None
) -> None:
    """Two runs of ``job`` started together into ``root``, one of them faulted (``fault``, else drawn at
    random) at a random point of its own; a crashed or fenced run is retried, as a scheduler does (exit 4:
    retry later). Adds to ``tally``."""
    LeaseLostError = lease_lost()
    job.prepare(root)
    fault = fault or rng.choice(["crash", "freeze", "hold"])
    at = rng.randint(1, max(1, job.fences if fault == "freeze" else job.steps))
    which = rng.randint(0, 1)
    with Runs() as runs:
        started = {}
        for v in (0, 1):
            started[v] = runs.start(f"r{v}", (lambda v=v: job.run(root, v)), fault if v == which else None, at)
        faulted, other = started[which], started[1 - which]
        runs.settle(faulted, [other], ttl)
        if faulted.stopped and fault == "crash":
            tally.crashes += 1
            runs.expire(ttl)  # the dead run's leases are silent: the retry takes them over
        elif faulted.stopped:
            runs.finish(faulted)
        if not faulted.done or isinstance(faulted.error, LeaseLostError):
            retry = runs.start("retry", lambda: job.run(root, which))
            runs.wait_for(lambda: retry.done, "the retry finishes")
        tally.trials += 1
        tally.runs += len(runs.runs)
        tally.waits += sum(r.waited for r in runs.runs.values())
        tally.takeovers += sum(r.takeovers for r in runs.runs.values())
        tally.fenced += sum(isinstance(r.error, LeaseLostError) for r in runs.runs.values())
        for r in runs.runs.values():
            if r.done and r.error is not None and not isinstance(r.error, LeaseLostError):
                tally.failures.append(f"{job.name} {r.name} ({fault} of r{which} at {at}): {r.error!r}")
    lost, dup = job.check(root)
    tally.lost += lost
    tally.duplicated += dup
    if lost or dup:
        tally.failures.append(f"{job.name} ({fault} of r{which} at {at}): rows lost {lost}, duplicated {dup}")


# ---- the three jobs -------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
LINE = '{ip} - {user} [{day}/Oct/2026:{hh}:30:00 +0000] "GET /login_success HTTP/1.1" 200 476 "-" "Mozilla/5.0"'
DAY = "2026-10-13"  # the day the score trials score (of the events fixture's four days, 10..13)
TRAIN_DAYS, VALIDATION_DAY = ("2026-10-10", "2026-10-11"), "2026-10-12"
TRAIN_SETTINGS = {
    "epochs": "2",
    "num_entity_vectors": "128",
    "vector_dim": "8",
    "mini_batch_size": "64",
    "num_ip_encoder_layers": "0",
    "progress_bar": "off",
    "backend": "local",
    "num_workers": "1",
}


def _ttl(ttl: float | None) -> dict[str, Any]:
    """The lease TTL setting (none: the default)."""
    return {} if ttl is None else {"ttl_seconds": ttl}


def write_log(path: Path, day_hours: list[tuple[int, str]], users: int, tag: str = "") -> Path:
    """An access log of ``users`` users, two addresses each, at each (day of Oct 2026, hour)."""
    lines = [
        LINE.format(ip=f"10.{day}.{u}.{h}", user=f"user{tag}_{u}", day=day, hh=hh)
        for day, hh in day_hours
        for u in range(users)
        for h in (1, 2)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def four_days(root: Path) -> Path:
    """Four days (Oct 10-13, 2026) of 30 users, ingested into ``root/events``: what the score and train runs read."""
    from ipinsights_jobs import ingest

    log = write_log(root / "logs" / "web.log", [(d, hh) for d in (10, 11, 12, 13) for hh in ("07", "19")], users=30)
    assert ingest.main([f"--inputs={log}", f"--output={root / 'events'}", "--engine=arrow"]) == 0
    return root / "events"


def small_model(events: Path, run: Path, epochs: int = 1) -> Path:
    """A model trained by the training job on the first two days of ``events``, at ``run/model``."""
    from ipinsights_jobs import train

    args = ["--events", str(events), "--start-date", TRAIN_DAYS[0], "--end-date", TRAIN_DAYS[1], "--output", str(run)]
    settings = {**TRAIN_SETTINGS, "epochs": str(epochs)}
    args += ["--backend", settings.pop("backend"), "--num-workers", settings.pop("num_workers")]
    assert train.main([*args, *(f"--{k}={v}" for k, v in settings.items())]) == 0
    return run / "model"


def _fresh(src: Path | None, root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    if src is None:
        root.mkdir(parents=True)
    else:
        shutil.copytree(src, root)


def _rows(folder: Path, columns: tuple[str, ...], tag: str = "") -> collections.Counter:
    import pyarrow.dataset as ds

    if not any(folder.glob("dt=*")):
        return collections.Counter()
    t = ds.dataset(folder, format="parquet", partitioning="hive").to_table()
    return collections.Counter((tag, *row) for row in zip(*(t[c].to_pylist() for c in columns), strict=True))


def ingest_job(spark: Any, base: Path, ttl: float | None = None) -> Job:
    """Ingest into a table holding host0's day: run 0 reads host1 and host2, run 1 host2 and host3 (one
    file in common, all of them on one day, host2 on the next too). The table must end as one clean run
    over all four files writes it."""
    from ipinsights.core.config import load_config
    from ipinsights.ingest.job import IngestConfig, run_ingest

    logs = [
        write_log(base / "logs" / f"host{i}.log", [(13, f"{8 + 3 * i:02d}")], users=4, tag=str(i)) for i in range(4)
    ]
    write_log(logs[2], [(13, "17"), (14, "02")], users=4, tag="2")
    inputs = {0: [logs[1], logs[2]], 1: [logs[2], logs[3]]}

    def ingest(files: list[Path], out: Path) -> Any:
        settings = {"inputs": ",".join(map(str, files)), "output": str(out), "engine": "arrow", **_ttl(ttl)}
        return run_ingest(spark, load_config(IngestConfig, REPO / "conf" / "ingest.yml", settings))

    def rows(root: Path) -> collections.Counter:
        return _rows(root / "events", ("entity", "ip", "ts", "source_file", "dt"))

    ingest([logs[0]], base / "prepared" / "events")
    ingest(logs, base / "clean" / "events")
    want = rows(base / "clean")
    return Job(
        "ingest",
        lambda root: _fresh(base / "prepared", root),
        lambda root, v: ingest(inputs[v], root / "events"),
        lambda root: compare(rows(root), want),
    )


def score_job(spark: Any, events: Path, model: Path, base: Path, ttl: float | None = None) -> Job:
    """Score one day into the same tables: run 0 at threshold 5, run 1 at 0 (their outputs differ). The
    three tables must end as one clean run of one of them writes them, whole."""
    from ipinsights.core.config import load_config
    from ipinsights.score.config import ScoreConfig
    from ipinsights.score.spark_job import run_score_job

    thresholds = {0: 5.0, 1: 0.0}

    def score(root: Path, v: int, days: list[str] | None = None) -> Any:
        settings = {
            "model": str(model),
            "events": str(events),
            "scores": str(root / "scores"),
            "flagged": str(root / "flagged"),
            "reports": str(root / "reports"),
            "threshold": thresholds[v],
            "target_fpr": None,
            "learning_period_events": 0,  # (the events' entities are few days old: scored by the model all the same)
            **_ttl(ttl),
        }
        cfg = load_config(ScoreConfig, REPO / "conf" / "score.yml", settings)
        return run_score_job(spark, cfg, days or [DAY])

    wants = []
    for v in (0, 1):
        _fresh(None, base / f"clean{v}")
        score(base / f"clean{v}", v)
        wants.append(score_rows(base / f"clean{v}"))
    assert wants[0] != wants[1], "the two runs' outputs must differ, or a mix of them goes unseen"

    def check(root: Path) -> tuple[int, int]:
        got = score_rows(root)
        return min((compare(got, w) for w in wants), key=sum)

    return Job("score", lambda root: _fresh(None, root), score, check)


def score_rows(root: Path) -> collections.Counter:
    """The rows of the three tables a scoring run writes (what a mix of two runs' outputs would change)."""
    return (
        _rows(root / "scores", ("dt", "entity", "ip", "ts", "flagged"), "scores")
        + _rows(root / "flagged", ("dt", "entity", "ip", "ts"), "flagged")
        + _rows(root / "cases", ("dt", "kind", "entity", "source", "events"), "cases")
    )


def train_job(spark: Any, events: Path, base: Path, ttl: float | None = None) -> Job:
    """Train into the same output: run 0 with seed 1, run 1 with seed 2 (their losses differ). The output must
    end as one run writes it, whole: the model's epochs, metrics.jsonl and the last checkpoint's history agree."""
    from ipinsights.core.config import TrainConfig, load_config
    from ipinsights.train.job import TrainInputs, run_train_job

    inputs = TrainInputs(
        events=str(events),
        start_date=TRAIN_DAYS[0],
        end_date=TRAIN_DAYS[1],
        validation_start_date=VALIDATION_DAY,
        validation_end_date=VALIDATION_DAY,
    )

    def train(root: Path, v: int) -> Any:
        settings = {**TRAIN_SETTINGS, "seed": str(v + 1), **_ttl(ttl)}
        cfg = load_config(TrainConfig, REPO / "conf" / "train.yml", settings)
        return run_train_job(spark, cfg, inputs, str(root / "run"))

    return Job("train", lambda root: _fresh(None, root), train, lambda root: train_check(root / "run", 2))


def train_check(run: Path, epochs: int) -> tuple[int, int]:
    """(epochs missing, entries foreign or twice) of a training output against its own model's record."""
    import json

    from ipinsights.storage.modelfile import read_manifest

    try:
        model = [(e["epoch"], round(e["loss"], 9)) for e in read_manifest(run / "model")["training"]["epochs"]]
    except Exception:
        return epochs, 0  # no (whole) model
    want = collections.Counter(model)
    metrics = collections.Counter(
        (m["epoch"], round(m["loss"], 9)) for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    )
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    history = collections.Counter((h["epoch"], round(h["loss"], 9)) for h in latest["history"])
    lost = max(0, epochs - len(want)) + sum((want - metrics).values()) + sum((want - history).values())
    return lost, sum((metrics - want).values()) + sum((history - want).values()) + sum(
        (want - collections.Counter(set(model))).values()
    )
