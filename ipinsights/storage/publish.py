"""Publishing Spark outputs: staged writes, day folders swapped into place, partition replace and delete."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
from ipinsights.core.config import LeaseOptions
from ipinsights.storage.events import AGENT_FIELDS
from ipinsights.storage.files import absolute_uri, atomic_leftovers, write_json
from ipinsights.storage.filesystems import ArrowStore, HadoopStore, arrow_fs, hadoop_path, jvm, resolve_uri
from ipinsights.storage.lease import LeaseLostError, Leases

log = logging.getLogger(__name__)

#: Parquet options of the ingest's staged write. Dictionary encoding is off where values rarely repeat
#: (entity, address: it was half of the writer's CPU, 2.7 -> 1.5 CPU-us per event row written, 2.5M
#: events, and lz4_raw compresses the plain strings well enough, faster), and on where few values repeat
#: all through: the source file, and the user agent and its parsed fields (a few thousand distinct agents
#: among millions of logins: the same write's CPU, and the day's files 30% smaller, 106 -> 74 MB on
#: bench/ingest_speed.py's 2.9M lines). The events table's files are these files, moved into place.
STAGED_PARQUET_OPTIONS = {
    "compression": "lz4_raw",
    "parquet.enable.dictionary": "false",
    "parquet.enable.dictionary#source_file": "true",
    **{f"parquet.enable.dictionary#{name}": "true" for name in AGENT_FIELDS},
}


def write_staged(df: DataFrame, path: str, partition_by: list[str], files_per_day: int = 0) -> None:
    """Write ``df`` to the run's staging folder ``path``, partitioned by ``partition_by`` (replacing it).

    ``files_per_day`` 0 writes each task's rows as they come (one file per input split and partition,
    no shuffle); N > 0 shuffles first so that each partition gets N files. The staging folder is a
    plain Spark write (its own commit: a failed job leaves no partial files visible under ``path``).
    """
    from pyspark.sql import functions as F

    if files_per_day:
        bucket = F.pmod(F.xxhash64(*df.columns), F.lit(files_per_day))
        df = df.repartition(*partition_by, bucket)
    # More open writers than the scores table: a task of logs holds kept rows of a day or two, filtered
    # rows and most kinds of bad line. Past the limit Spark sorts the rest of the task's rows: at 8,
    # with 9 reasons to quarantine, it sorted most of them (a third of the write's CPU). The writers of
    # rare outcomes stay small: a Parquet writer's buffers grow with what it is given.
    conf = {**PARTITIONED_WRITE_CONF, "spark.sql.maxConcurrentOutputFileWriters": "32"}
    with partitioned_write_settings(df.sparkSession, conf):
        writer = df.write.mode("overwrite").options(**STAGED_PARQUET_OPTIONS).partitionBy(*partition_by)
        writer.parquet(resolve_uri(df.sparkSession, path))


class PublishError(OSError):
    """A publish failed and could not be rolled back: ``kept`` lists folders holding data that must not
    be deleted (an old folder that could not be put back), so the caller keeps its staging area."""

    def __init__(self, message: str, kept: list[str]) -> None:
        super().__init__(message)
        self.kept = kept


def replace_folders(
    store: HadoopStore | ArrowStore,
    moves: Iterable[tuple[str | None, str]],
    trash: str,
    journal: str | None = None,
    fence: Callable[[], None] | None = None,
) -> None:
    """Move each ``src`` folder to ``dst``, replacing what was there (dynamic partition overwrite): all or none.

    A ``src`` of None removes ``dst`` (a day that no longer has rows). Per folder the old one is renamed
    into ``trash`` and the new one into place. Only when every folder is in place are the old ones
    deleted. If a rename fails (an S3 copy error, a full disk), everything is put back as it was: what
    reached a ``dst`` returns to its ``src`` and every old folder returns to its ``dst``; then the error
    is raised. If even that fails, :class:`PublishError` names the folders still holding data and
    nothing is deleted.

    ``journal`` (a JSON file) survives a process killed between the renames: it lists the renames and
    the one about to start, and :func:`recover_publish` finishes or undoes the publish from it. It is
    rewritten before each rename and removed at the end.

    On HDFS and local disks each rename is one metadata operation, so a reader sees the old folder or
    the new one (and at worst, between the two renames, briefly none). On S3 a rename is a copy: there a
    reader can briefly see a folder missing or partly copied; use a table format (Delta/Iceberg) for
    that. ``trash`` must be on the same filesystem (a sibling is).

    ``fence`` runs before each rename (:meth:`ipinsights.storage.lease.Leases.renew`): when it raises
    :class:`~ipinsights.storage.lease.LeaseLostError` the publish stops where it is, undoing nothing and
    keeping its journal, which the run that took the lease over finishes or undoes.
    """
    store.mkdirs(trash)
    ops: list[tuple[str, str]] = []  # the renames, in order; before each, its destination does not exist
    olds: list[str] = []
    for i, (src, dst) in enumerate(moves):
        if store.exists(dst):
            olds.append(f"{trash.rstrip('/')}/{i}")
            ops.append((dst, olds[-1]))
        if src is not None:
            store.mkdirs(dst.rstrip("/").rsplit("/", 1)[0])
            ops.append((src, dst))
    step = 0
    try:
        for step, (a, b) in enumerate(ops):
            if fence is not None:
                fence()
            _write_journal(store, journal, ops, olds, step)
            store.rename(a, b)
        _write_journal(store, journal, ops, olds, len(ops))  # committed: a recovery completes it
    except LeaseLostError:
        raise  # fenced: another run holds these folders now and settles this publish from its journal
    except BaseException as exc:
        _undo(store, ops, step, exc)
        if journal is not None:
            store.delete(journal)
        raise
    _finish(store, olds, journal)


def _write_journal(
    store: HadoopStore | ArrowStore, journal: str | None, ops: list[tuple[str, str]], olds: list[str], step: int
) -> None:
    if journal is not None:
        state = {"renames": [list(op) for op in ops], "replaced": olds, "next": step}
        write_json(journal, state, store.spark if isinstance(store, HadoopStore) else None)


def _finish(store: HadoopStore | ArrowStore, olds: list[str], journal: str | None) -> None:
    """A publish whose renames all succeeded: delete the replaced folders, then the journal."""
    for old in olds:
        store.delete(old)
    if journal is not None:
        store.delete(journal)


def _move_back(store: HadoopStore | ArrowStore, moved: str, home: str) -> None:
    """Put what a rename moved to ``moved`` back at ``home``. Both exist after a rename that stopped
    half way (an object store copies file by file): then each file goes back, one still at ``home`` is
    the original of a copy. Published folders are flat (``dt=DAY/part-*.parquet``)."""
    if not store.exists(home):
        store.rename(moved, home)
        return
    there = {f.rsplit("/", 1)[1] for f in store.list_files(home)}
    for f in store.list_files(moved):
        name = f.rsplit("/", 1)[1]
        if name in there:
            store.delete(f)
        else:
            store.rename(f, f"{home.rstrip('/')}/{name}")
    store.delete(moved)


def _undo(store: HadoopStore | ArrowStore, ops: list[tuple[str, str]], step: int, exc: BaseException) -> None:
    """Undo renames ``ops[:step + 1]`` (the last one may not have started, or stopped half way), newest
    first; PublishError naming the folders that hold data if that fails too."""
    kept: list[str] = []
    for src, dst in reversed(ops[: step + 1]):
        try:
            if store.exists(dst):
                _move_back(store, dst, src)
        except Exception as undo:
            kept += [src, dst]
            log.error("publish rollback of %s -> %s failed: %s", src, dst, undo)
    if kept:
        raise PublishError(f"publish failed ({exc}) and could not be rolled back; data kept in {kept}", kept) from exc


JOURNAL_PREFIX = "_publish-"


def recover_publish(store: HadoopStore | ArrowStore, journal: str) -> str:
    """Finish or undo the publish that ``journal`` describes (its process died between the renames).

    A publish that had moved every folder is completed (the replaced folders deleted); any other is
    rolled back: the new folders return to staging and the old ones to the table, so no folder that the
    dead run replaced is lost. Returns ``"completed"`` or ``"rolled back"``; PublishError if the rollback
    fails (the journal stays, for the next try).
    """
    state = _read_journal(store, journal)
    ops = [(str(a), str(b)) for a, b in state["renames"]]
    olds = [str(o) for o in state["replaced"]]
    step = int(state["next"])
    if step >= len(ops):
        _finish(store, olds, journal)
        return "completed"
    _undo(store, ops, step, RuntimeError(f"interrupted publish {journal}"))
    store.delete(journal)
    return "rolled back"


def _read_journal(store: HadoopStore | ArrowStore, journal: str) -> dict[str, Any]:
    if isinstance(store, HadoopStore):  # (Spark's readers skip a file named _*: Hadoop's API reads it)
        fs, path = hadoop_path(store.spark, journal)
        stream = fs.open(path)
        try:
            text = str(jvm(store.spark).org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
        finally:
            stream.close()
    else:
        fs, path = arrow_fs(journal)
        with fs.open_input_stream(path) as fh:
            text = fh.read().decode("utf-8")
    state: dict[str, Any] = json.loads(text)
    return state


def _journal_targets(state: dict[str, Any]) -> set[str]:
    """The folders a journalled publish writes (what it moves in, or replaces), as lease targets."""
    replaced = set(state["replaced"])
    return {_target(b if b not in replaced else a) for a, b in state["renames"]}


def _target(uri: str) -> str:
    return absolute_uri(uri).rstrip("/")


def recover_publishes(store: HadoopStore | ArrowStore, folder: str) -> dict[str, str]:
    """:func:`recover_publish` every journal (``_publish-*.json``) in ``folder``; returns journal -> outcome.

    Only for journals whose runs are known to be gone: the jobs settle journals through
    :class:`Publisher`, under the leases of the folders they touch (never a live run's)."""
    done = {}
    for f in sorted(store.list_files(folder)):
        name = f.rsplit("/", 1)[1]
        if name.startswith(JOURNAL_PREFIX) and name.endswith(".json"):
            done[f] = recover_publish(store, f)
            log.warning("an interrupted publish (%s) was %s", f, done[f])
    return done


class Publisher:
    """How a job publishes (every job's one code path): under leases on what it writes, fenced.

    ``hold(targets)`` takes the leases of the folders (or files) the run will write, in sorted order,
    waiting for another run that holds one as ``options`` say (:class:`~ipinsights.storage.lease.Leases`).
    Holding them, it settles the interrupted publishes whose journals (in ``root``) touch them: their
    writer no longer holds those folders, so it is dead or fenced, and only now is its journal finished
    or undone (:func:`recover_publish`), then its staging folder (``root/run_id=RUN``) removed. A journal
    that also touches folders this run does not hold needs their leases too: taken at once if they are
    free, else everything is given back and taken again in order (never waiting out of order). A journal
    that touches none of them is settled too when its leases are free (its run is gone), else left to
    its holder.

    :meth:`replace_folders` renews the leases before each rename (the fence): a run whose lease was taken
    over stops, publishing nothing more (:class:`~ipinsights.storage.lease.LeaseLostError`).
    """

    def __init__(
        self,
        store: HadoopStore | ArrowStore,
        root: str,
        run_id: str,
        options: LeaseOptions,
        spark: SparkSession | None = None,
    ) -> None:
        self.store, self.root, self.run_id = store, root.rstrip("/"), run_id
        self.leases = Leases(run_id, options, spark)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.leases.release()

    def _journals(self) -> list[tuple[str, set[str]]]:
        """(journal, the folders it publishes) of every interrupted publish in ``root``."""
        found = []
        for f in sorted(self.store.list_files(self.root)):
            name = f.rsplit("/", 1)[1]
            if name.startswith(JOURNAL_PREFIX) and name.endswith(".json"):
                try:
                    found.append((f, _journal_targets(_read_journal(self.store, f))))
                except FileNotFoundError:  # its run finished meanwhile
                    continue
        return found

    def hold(self, targets: Iterable[str]) -> None:
        """Take the leases of ``targets`` and settle the interrupted publishes that touch them (see the class)."""
        want = {_target(t) for t in targets} | set(self.leases.held)
        while True:
            self.leases.acquire(want)
            journals = self._journals()
            held = set(self.leases.held)
            extra = set().union(*(t for _, t in journals if t & held)) - held
            if not extra or self.leases.acquire(extra, wait=False):
                break
            log.info("an interrupted publish also touches %s: taking every lease again, in order", sorted(extra))
            self.leases.release()
            want |= extra
        for journal, touched in journals:
            if touched <= set(self.leases.held):
                self._settle(journal)
            elif not touched & want and self.leases.acquire(touched, wait=False):
                self._settle(journal)
                self.leases.release(touched - want)
        self.leases.release(set(self.leases.held) - want)
        self._clear_taken_over()

    def _settle(self, journal: str) -> None:
        outcome = recover_publish(self.store, journal)
        log.warning("an interrupted publish (%s) was %s", journal, outcome)

    def _clear_taken_over(self) -> None:
        """Remove the staging folders of the runs whose leases this run took over and whose publishes are settled."""
        left = [j.rsplit("/", 1)[1] for j, _ in self._journals()]
        for run in {str(d.get("run_id")) for d in self.leases.taken_over.values()} - {self.run_id}:
            mine = (f"{JOURNAL_PREFIX}{run}-", f"{JOURNAL_PREFIX}{run}.")
            if not any(j.startswith(mine) for j in left):
                self.store.delete(f"{self.root}/run_id={run}")
                for tmp in atomic_leftovers(self.root):  # a journal it was writing when it died
                    if tmp.name[1:].startswith(mine):
                        tmp.unlink(missing_ok=True)

    def settle(self, run_id: str) -> None:
        """Settle the interrupted publishes of an earlier attempt of ``run_id`` (before its staging is cleared)."""
        mine = (f"{JOURNAL_PREFIX}{run_id}-", f"{JOURNAL_PREFIX}{run_id}.")
        touched = set().union(*(t for j, t in self._journals() if j.rsplit("/", 1)[1].startswith(mine)))
        if touched:
            self.hold(touched)
            self.leases.release()

    def replace_folders(self, moves: Iterable[tuple[str | None, str]], trash: str, journal: str) -> None:
        """:func:`replace_folders` of folders this run holds, renewing its leases before each rename."""
        moves = list(moves)
        missing = {_target(dst) for _, dst in moves} - set(self.leases.held)
        if missing:
            raise RuntimeError(f"publishing {sorted(missing)} without holding their leases")
        replace_folders(self.store, moves, trash, journal, fence=self.leases.renew)

    @property
    def fenced(self) -> bool:
        """Whether a lease of this run was taken over (then its staging belongs to the run that took it)."""
        return self.leases.lost is not None


def publish_partitions(
    store: HadoopStore | ArrowStore,
    staged: str,
    table: str,
    days: Iterable[str],
    trash: str,
    journal: str | None = None,
) -> None:
    """Move each staged ``dt=DAY`` folder of ``staged`` into ``table``, replacing that day's folder.

    A rerun of a day therefore replaces it, never duplicates it, and days not in ``days`` are left
    alone. See :func:`replace_folders` for what a reader can see meanwhile.
    """
    moves = [(f"{staged.rstrip('/')}/dt={d}", f"{table.rstrip('/')}/dt={d}") for d in sorted(set(days))]
    replace_folders(store, moves, trash, journal)


def write_quarantine(df: DataFrame, path: str, run_id: str) -> None:
    """Append this run's bad lines under ``<path>/run_id=<run_id>/`` (replacing only that run's folder)."""
    from pyspark.sql import functions as F

    (
        df.withColumn("run_id", F.lit(run_id))
        .coalesce(1)  # bad lines are few; one file per run keeps the quarantine browsable
        .write.mode("overwrite")
        .option("partitionOverwriteMode", "dynamic")
        .partitionBy("run_id")
        .parquet(resolve_uri(df.sparkSession, path))
    )


#: Spark SQL settings of a ``partitionBy`` Parquet write (see :func:`partitioned_write_settings`).
PARTITIONED_WRITE_CONF = {
    # A planned write sorts every row by the partition columns first (a copy of each row into Spark's
    # sorter: ~0.7 CPU-us per scored row, a fifth of writing it). Without it, and with concurrent writers,
    # a task keeps one open file per day instead; past that many days in one task, Spark sorts the rest.
    "spark.sql.optimizer.plannedWrite.enabled": "false",
    # Each open writer buffers a row group: few, as a task of a daily table rarely holds more than a day or two.
    "spark.sql.maxConcurrentOutputFileWriters": "4",
}


# Runs sharing one SparkSession (threads of one driver: a notebook's jobs, the concurrency harness) share
# its runtime settings, so the session's own values are saved by the first write to enter and restored by
# the last to leave; in between, the settings of the latest write to start are in force (they tune speed
# and memory of the write, never what it writes).
_SETTINGS_LOCK = threading.Lock()
_SETTINGS_SAVED: dict[int, tuple[int, dict[str, str | None]]] = {}  # id(session) -> (writers inside, values before)


@contextmanager
def partitioned_write_settings(spark: SparkSession, conf: dict[str, str] | None = None) -> Iterator[None]:
    """``PARTITIONED_WRITE_CONF`` (or ``conf``) in force inside the block, the session's own values restored after.

    Both settings are read when the write is planned and started, so they belong around the write call;
    the session's other work (before and after) keeps its settings, also when writes of several threads overlap.
    """
    conf = PARTITIONED_WRITE_CONF if conf is None else conf
    key = id(spark)
    with _SETTINGS_LOCK:
        inside, saved = _SETTINGS_SAVED.get(key, (0, {}))
        for name in conf:
            if name not in saved:
                saved[name] = spark.conf.get(name, None)
        _SETTINGS_SAVED[key] = (inside + 1, saved)
        for name, value in conf.items():
            spark.conf.set(name, value)
    try:
        yield
    finally:
        with _SETTINGS_LOCK:
            inside, saved = _SETTINGS_SAVED.pop(key)
            if inside > 1:
                _SETTINGS_SAVED[key] = (inside - 1, saved)
            else:
                for name, before in saved.items():
                    if before is None:
                        spark.conf.unset(name)
                    else:
                        spark.conf.set(name, before)


def write_partitions(df: DataFrame, path: str) -> None:
    """Write ``df`` partitioned by ``dt``, replacing only the days it holds (dynamic partition overwrite)."""
    with partitioned_write_settings(df.sparkSession):
        writer = df.write.mode("overwrite").option("partitionOverwriteMode", "dynamic").partitionBy("dt")
        writer.parquet(resolve_uri(df.sparkSession, path))


def drop_unreported(store: ArrowStore | HadoopStore, written: set[str]) -> None:
    """Delete the files beside ``written`` that no successful task reported: those of failed or
    speculative attempts of the Python tasks that wrote them (their rows are in the attempt that succeeded)."""
    for folder in {f.rsplit("/", 1)[0] for f in written}:
        for f in store.list_files(folder):
            if f not in written:
                store.delete(f)
