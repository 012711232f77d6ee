"""Ingest: raw access logs -> a ``dt``-partitioned Parquet table of (entity, ip, ts) events.

Every line is classified once (:func:`ipinsights.ingest.logparse.classify_batch`: an event, filtered out,
or quarantined with a reason), by one of two engines:

* ``arrow`` (local files and S3): Spark runs one Python task per byte range of the logs; the task
  reads its lines with ``pyarrow.fs``, classifies them in Arrow arrays and writes its events (one
  Parquet file per day) and bad lines to the run's staging folder itself, returning only counts.
  No line crosses into the JVM: on 2 cores this ran the tutorial-scale log in 6.4 s against 24.2 s
  for the ``spark`` engine (``bench/ingest_speed.py``), which spends most of its CPU converting rows
  between the JVM and Arrow and in Spark's Parquet writer, and compiling them on first use.
* ``spark`` (any Hadoop filesystem: HDFS, EMRFS, DBFS, S3A with the cluster's settings): Spark's
  text source, :func:`ipinsights.ingest.logparse.classify_lines` (the same classifier as an Arrow UDF) and
  Spark's Parquet writer, staged partitioned by outcome and day; the counts come from one small
  aggregation over the staged partition columns.

Either way the staging folder is ``<output>_staging/run_id=<run>``; then the bad-line ratio is
checked, and only then are the days published and the summary saved. A run that fails the ratio
check has replaced no partition of the main table.

A run replaces, per day, the rows of the log files it read and keeps the other files' rows
(``source_file``), so runs over parts of a day add up and a rerun is idempotent: a day shared with
other files is rewritten (their rows read back, by pyarrow in Python tasks for ``arrow``, by Spark for
``spark``) into staging, then every day is published at once, all or nothing, with a journal that the
next run uses to finish or undo a publish that a killed process left half done.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from ipinsights.core.config import ConfigError, LeaseOptions, check_float, check_int, config_to_dict
from ipinsights.ingest import logparse
from ipinsights.ingest.logparse import EntityOptions, LineLimits, LineRules, ResourceFilter
from ipinsights.storage.events import day_range, present_days, read_events
from ipinsights.storage.files import write_json
from ipinsights.storage.filesystems import ArrowStore, HadoopStore, arrow_fs, arrow_readable, resolve_uri
from ipinsights.storage.lease import LeaseLostError
from ipinsights.storage.logfiles import (
    LogSplit,
    StreamDamage,
    codec_of,
    has_log_files,
    iter_split_blocks,
    list_log_files,
    plan_log_splits,
    python_reader_uri,
    read_compressed_lines,
    read_log_lines,
)
from ipinsights.storage.parquet import parquet_writer
from ipinsights.storage.publish import (
    JOURNAL_PREFIX,
    Publisher,
    PublishError,
    drop_unreported,
    write_quarantine,
    write_staged,
)

__all__ = [
    "BadInputError",
    "EntityOptions",
    "IngestConfig",
    "QualityOptions",
    "ResourceFilter",
    "run_ingest",
]

log = logging.getLogger(__name__)

#: The outcome of a compressed log that could not be read to its end (a quarantine reason of its own).
UNREADABLE = "unreadable"

_STAGED_SCHEMA = (
    "entity string, ip string, ip_int long, ip_version int, ts timestamp, source_file string, user_agent string, "
    "ua_family string, ua_os string, ua_device string, outcome string, dt string"
)


class BadInputError(RuntimeError):
    """Too many bad lines: the run wrote no events. ``summary`` holds the counts that decided it."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


@dataclass(frozen=True)
class QualityOptions(LineLimits):
    """Bad-line handling: the classifier's line limits, and the run fails (writing no events) when
    quarantined/read > ``max_bad_ratio``."""

    max_bad_ratio: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float("max_bad_ratio", self.max_bad_ratio, 0.0, 1.0)


ENGINES = ("auto", "arrow", "spark")
#: ``{date}`` or ``{date:FMT}`` in an input (group 1: the strftime format). Matched on its own, so that a
#: glob's ``{a,b}`` is never taken for a placeholder (nor formatted).
DATE_PLACEHOLDER = re.compile(r"\{date(?::([^{}]*))?\}")


@dataclass(frozen=True)
class IngestConfig:
    """Everything an ingest run needs, as loaded from ``conf/ingest.yml`` plus overrides.

    The sections ``resource``, ``entity`` and ``quality`` are the classifier's own option classes
    (:mod:`ipinsights.ingest.logparse`), so that what a valid filter is is defined once, there.

    ``quarantine`` defaults to ``<output>_quarantine`` and ``summary`` to
    ``<output>_summaries/<run_id>.json``; ``run_id`` defaults to the UTC start time and a random part. ``engine``:
    ``arrow``, ``spark`` or ``auto`` (``arrow`` where inputs and output are local, see the module doc).

    An input may hold ``{date:FMT}`` (a strftime format; ``{date}`` is ``%Y-%m-%d``): it is read once per
    day of ``start_date``..``end_date`` (``--date D`` sets both), with the day put in
    (:meth:`dated_inputs`); inputs without one are read as they are. Days without a placeholder to put them
    in, or a placeholder without days, are refused: either would read other days' logs without a word.
    """

    inputs: tuple[str, ...] = ()
    output: str = ""
    start_date: str = ""
    end_date: str = ""
    quarantine: str = ""
    summary: str = ""
    run_id: str = ""
    engine: str = "auto"
    split_mb: int = 0
    files_per_day: int = 0
    resource: ResourceFilter = field(default_factory=ResourceFilter)
    entity: EntityOptions = field(default_factory=EntityOptions)
    quality: QualityOptions = field(default_factory=QualityOptions)
    lease: LeaseOptions = field(default_factory=LeaseOptions)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("inputs is required: --inputs=PATH[,PATH...] (files, globs, s3:// URIs)")
        if not self.output:
            raise ConfigError("output is required: --output=PATH (the dt-partitioned Parquet table)")
        self._check_dates()
        check_int("files_per_day", self.files_per_day, 0, 10_000)
        check_int("split_mb", self.split_mb, 0, 4096)
        if self.engine not in ENGINES:
            raise ConfigError(f"engine={self.engine!r} must be one of {', '.join(ENGINES)}")
        if self.engine == "arrow":
            if self.files_per_day:
                raise ConfigError("files_per_day > 0 shuffles rows between tasks: it needs engine=spark")
            odd = [u for u in (*self.inputs, self.output) if not arrow_readable(u)]
            if odd:
                raise ConfigError(f"engine=arrow reads local paths, file:// and s3:// only, not {odd}")
        if self.run_id and not re.fullmatch(r"[A-Za-z0-9_.:-]+", self.run_id):
            raise ConfigError(f"run_id={self.run_id!r} may only hold letters, digits and _.:-")
        # The start time names the run; the random part keeps apart runs started in the same second
        # (each has its own staging folder, summary and quarantine).
        run_id = self.run_id or f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        out = self.output.rstrip("/")
        object.__setattr__(self, "run_id", run_id)
        object.__setattr__(self, "quarantine", self.quarantine or f"{out}_quarantine")
        object.__setattr__(self, "summary", self.summary or f"{out}_summaries/{run_id}.json")

    def _check_dates(self) -> None:
        dated = [u for u in self.inputs if DATE_PLACEHOLDER.search(u)]
        if bool(self.start_date) != bool(self.end_date):
            raise ConfigError("start_date and end_date go together (--date D sets both to D)")
        if dated and not self.start_date:
            raise ConfigError(
                f"input {dated[0]!r} holds a {{date:...}} placeholder: give the day to read "
                "(--date YYYY-MM-DD, or --start-date/--end-date for a backfill)"
            )
        if self.start_date and not dated:
            raise ConfigError(
                f"days {self.start_date}..{self.end_date} given (--date or --start-date/--end-date), but no input "
                f"holds a {{date:FMT}} placeholder to put them in: {list(self.inputs)} would be read whatever the "
                "day; put the day in the path, e.g. --inputs='s3://bucket/logs/{date:%Y/%m/%d}/*.gz'"
            )
        if self.start_date:
            day_range(self.start_date, self.end_date)  # a malformed or reversed range: ConfigError

    def days(self) -> list[str]:
        """The days this run reads (``start_date``..``end_date``); none for an undated run."""
        return day_range(self.start_date, self.end_date) if self.start_date else []

    def dated_inputs(self) -> list[tuple[str, str | None, str]]:
        """(URI, day, pattern) of every input to read: a ``{date:FMT}`` pattern once per day, with the
        placeholders formatted (the string only: a URI's scheme, globs and all stay as given); an input
        without one once, with day None."""
        out: list[tuple[str, str | None, str]] = []
        for pattern in self.inputs:
            if not DATE_PLACEHOLDER.search(pattern):
                out.append((pattern, None, pattern))
                continue
            for day in self.days():
                put_in = functools.partial(_format_day, date.fromisoformat(day))
                out.append((DATE_PLACEHOLDER.sub(put_in, pattern), day, pattern))
        return out

    def resolved_inputs(self) -> list[str]:
        """The inputs this run reads: :meth:`dated_inputs`' URIs (each once)."""
        return list(dict.fromkeys(uri for uri, _, _ in self.dated_inputs()))

    def line_rules(self) -> LineRules:
        """The classifier's settings: the config's own sections (each checked itself when it was built)."""
        return LineRules(self.resource, self.entity, self.quality)

    def resolved_engine(self) -> str:
        """``auto`` -> ``arrow`` for local inputs and output (no shuffle asked for), else ``spark``."""
        if self.engine != "auto":
            return self.engine
        local = all("://" not in u or u.startswith("file://") for u in (*self.inputs, self.output))
        return "arrow" if local and not self.files_per_day else "spark"


def _format_day(day: date, placeholder: re.Match[str]) -> str:
    """A ``{date:FMT}`` placeholder with ``day`` put in (``{date}``: ``YYYY-MM-DD``)."""
    return day.strftime(placeholder.group(1) or "%Y-%m-%d")


def _summarise(rows: list, cfg: IngestConfig) -> dict[str, Any]:
    """Counts per (file, outcome, dt) from the aggregation job -> the run summary."""
    per_file: dict[str, dict[str, Any]] = {}
    by_reason: dict[str, int] = {}
    days: dict[str, int] = {}
    totals = {"lines_read": 0, "kept": 0, "filtered_out": 0, "quarantined": 0}
    for r in rows:
        f = per_file.setdefault(
            r["source_file"], {"lines_read": 0, "kept": 0, "filtered_out": 0, "quarantined": 0, "by_reason": {}}
        )
        n = int(r["count"])
        f["lines_read"] += n
        totals["lines_read"] += n
        if r["outcome"] == logparse.KEPT:
            key = "kept"
            days[str(r["dt"])] = days.get(str(r["dt"]), 0) + n
        elif r["outcome"] == logparse.FILTERED:
            key = "filtered_out"
        else:
            key = "quarantined"
            f["by_reason"][r["outcome"]] = f["by_reason"].get(r["outcome"], 0) + n
            by_reason[r["outcome"]] = by_reason.get(r["outcome"], 0) + n
        f[key] += n
        totals[key] += n
    ratio = totals["quarantined"] / totals["lines_read"] if totals["lines_read"] else 0.0
    return {
        "run_id": cfg.run_id,
        "inputs": cfg.resolved_inputs(),
        "days": cfg.days(),
        "output": cfg.output,
        "quarantine": cfg.quarantine,
        **totals,
        "quarantined_by_reason": dict(sorted(by_reason.items())),
        "bad_ratio": round(ratio, 6),
        "max_bad_ratio": cfg.quality.max_bad_ratio,
        "kept_by_day": dict(sorted(days.items())),
        "unreadable_files": sorted(f for f, c in per_file.items() if UNREADABLE in c["by_reason"]),
        "per_file": dict(sorted(per_file.items())),
    }


@dataclass(frozen=True)
class _SplitTask:
    """What an ``arrow`` engine task needs (picklable: no Spark in it)."""

    rules: LineRules
    staging: str


_EVENT_FIELDS = ("entity", "ip", "ip_int", "ip_version")


def _ingest_split(task: _SplitTask, item: tuple[int, LogSplit]) -> dict[str, Any]:
    """One ``arrow`` engine task: classify a split's lines; write its events (a file per day) and bad
    lines under the staging folder; return the counts per (outcome, day) and the files written.

    Each block of lines is written as it is classified (a row group), so a task holds one block,
    however long a compressed file is. A compressed file that cannot be read to its end (truncated,
    corrupt) keeps what was read before the error and counts once as an ``unreadable`` bad line, with
    the error in the quarantine: failing the task would fail the whole job, on every retry.

    File names carry a random part, so a retried task never overwrites the files of the attempt
    before it: the driver keeps only the files that successful attempts report.
    """
    from collections import Counter

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n, split = item
    tag = f"part-{n:05d}-{uuid.uuid4().hex[:12]}"
    counts: Counter = Counter()
    writers: dict[str, Any] = {}  # day or "quarantine" -> open Parquet writer

    def write(key: str, uri: str, table: pa.Table) -> None:
        if key not in writers:
            writers[key] = parquet_writer(uri, table.schema)
        writers[key].write_table(table)

    def quarantine(reason: pa.Array, raw: pa.Array) -> None:
        source = pa.array([split.uri] * len(raw), pa.string())
        table = pa.table({"reason": reason, "source_file": source, "raw": raw})
        write("quarantine", f"{task.staging}/quarantine/{tag}.parquet", table)

    limits = task.rules.limits
    try:
        for lines in iter_split_blocks(split, max_line_bytes=limits.read_cap):
            if isinstance(lines, StreamDamage):
                counts[(UNREADABLE, None)] += 1
                quarantine(pa.array([UNREADABLE]), pa.array([lines.message[: limits.raw_max_chars]]))
                log.warning("%s: %s", split.uri, lines.message)
                break
            res = logparse.classify_batch(lines, task.rules)
            outcome = res.column("outcome")
            kept = pc.equal(outcome, logparse.KEPT)
            counts.update(
                {(k["values"], None): k["counts"] for k in pc.value_counts(outcome.filter(pc.invert(kept))).to_pylist()}
            )
            ev = res.filter(kept)
            seconds = ev.column("epoch_s").to_numpy(zero_copy_only=False)
            day = seconds // 86400  # the UTC day (floor: right for the years before 1970 an offset allows)
            table = pa.table(
                {
                    **{f: ev.column(f) for f in _EVENT_FIELDS},
                    "ts": pa.array(seconds * 1_000_000, pa.timestamp("us", tz="UTC")),
                    "source_file": pa.DictionaryArray.from_arrays(np.zeros(len(ev), np.int32), [split.uri]),
                    **{f: ev.column(f) for f in logparse.AGENT_FIELDS},
                }
            )
            for d in np.unique(day):
                name = str(np.datetime64(int(d), "D"))
                rows = day == d
                counts[(logparse.KEPT, name)] += int(rows.sum())
                write(name, f"{task.staging}/events/dt={name}/{tag}.parquet", table.filter(pa.array(rows)))
            bad = pc.is_valid(res.column("raw"))  # classify_batch sets raw on exactly those lines
            if pc.any(bad).as_py():
                q = res.filter(bad)
                quarantine(q.column("outcome"), q.column("raw"))
    finally:
        for w in writers.values():
            w.close()
    files = [f"{task.staging}/events/dt={d}/{tag}.parquet" for d in writers if d != "quarantine"]
    if "quarantine" in writers:
        files.append(f"{task.staging}/quarantine/{tag}.parquet")
    return {
        "counts": [{"source_file": split.uri, "outcome": o, "dt": d, "count": c} for (o, d), c in counts.items()],
        "files": files,
    }


def _stage_arrow(spark, cfg: IngestConfig, staging: str, store: ArrowStore) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``arrow`` engine's pass: one Spark task per split; returns the count rows and the files read."""
    files = list_log_files(cfg.resolved_inputs())
    total = sum(size for _, size in files)
    # About 3 splits per core, 4-64 MB each: enough to even out the cores' work, few enough files.
    parallelism = spark.sparkContext.defaultParallelism
    split_bytes = cfg.split_mb << 20 or min(64 << 20, max(4 << 20, -(-total // (3 * parallelism))))
    splits = sorted(plan_log_splits(files, split_bytes), key=lambda s: s.start - s.end)  # longest first
    log.info("ingest: %d files, %.1f MB, %d splits", len(files), total / 1e6, len(splits))
    task = _SplitTask(cfg.line_rules(), staging)
    rdd = spark.sparkContext.parallelize(list(enumerate(splits)), max(1, len(splits)))
    results = rdd.map(functools.partial(_ingest_split, task)).collect()
    drop_unreported(store, {f for r in results for f in r["files"]})
    return [row for r in results for row in r["counts"]], [uri for uri, _ in files]


def _stage_spark(spark, cfg: IngestConfig, staging: str):
    """The ``spark`` engine's pass: classified lines staged by outcome and day; returns (count rows,
    a function that writes the quarantine from the staged bad lines, the files read)."""
    from pyspark.sql import functions as F

    lines = read_log_lines(spark, cfg.resolved_inputs())
    # The listing names empty files too; Hadoop spells a local file file:///x there, file:/x in the rows.
    files = sorted(re.sub("^file:///", "file:/", f) for f in lines.inputFiles())
    # Compressed files go through the arrow engine's reader wherever Python reaches them: Hadoop's
    # codecs fail the task, and so the job, on a damaged stream (ignoreCorruptFiles would drop the rest
    # of the file without telling anyone which). Elsewhere Spark's error names the file.
    streamed = {f: r for f in files if codec_of(f) and (r := python_reader_uri(f)) is not None}
    lines = lines.withColumn("damage", F.lit(None).cast("string"))
    if streamed:
        plain = [f for f in files if f not in streamed]
        compressed = read_compressed_lines(spark, streamed, cfg.line_rules().limits.read_cap)
        if plain:
            lines = read_log_lines(spark, plain).withColumn("damage", F.lit(None).cast("string"))
        lines = lines.unionByName(compressed) if plain else compressed
    classified = logparse.classify_lines(lines, cfg.line_rules())
    damaged = F.col("damage").isNotNull()
    classified = classified.withColumns(
        {
            "outcome": F.when(damaged, F.lit(UNREADABLE)).otherwise(F.col("outcome")),
            "raw": F.when(damaged, F.substring("damage", 1, cfg.line_rules().limits.raw_max_chars)).otherwise(
                F.col("raw")
            ),
        }
    )
    outcome = F.col("outcome")
    kept = outcome == logparse.KEPT
    bad = logparse.quarantined(outcome)
    # One schema for every staged file, so that the event files move into the table as written: the
    # events' columns plus their source file; a bad line's raw text rides in ``entity`` (a filtered
    # line keeps only its file, for the counts).
    staged = classified.select(
        F.when(kept, F.col("entity")).when(bad, F.col("raw")).alias("entity"),
        *(F.col(c) for c in ("ip", "ip_int", "ip_version", "ts", "source_file", *logparse.AGENT_FIELDS)),
        outcome,
        F.col("dt").cast("string").alias("dt"),
    )
    write_staged(staged, staging, ["outcome", "dt"], cfg.files_per_day)
    done = spark.read.schema(_STAGED_SCHEMA).parquet(resolve_uri(spark, staging))
    # Every count of the summary from one small aggregation over the staged file and partition columns.
    rows = [r.asDict() for r in done.groupBy("source_file", "outcome", "dt").count().collect()]

    def quarantine_rows() -> None:
        bad_rows = done.where(logparse.quarantined(F.col("outcome")))
        write_quarantine(
            bad_rows.select(F.col("outcome").alias("reason"), "source_file", F.col("entity").alias("raw")),
            cfg.quarantine,
            cfg.run_id,
        )

    return rows, quarantine_rows, files


def _publish_events(
    spark,
    pub: Publisher,
    cfg: IngestConfig,
    staging: str,
    events: str,
    files: list[str],
    kept_days: set[str],
) -> dict[str, list[str]]:
    """Put this run's events into the table: per day, the rows of the files it read are replaced by
    what it found in them, and every other file's rows stay.

    First the leases of the days it rewrites (its own days, and the days where its files had rows, which
    are read under those leases: another run over the same files may be publishing them). A day that
    only this run's files fill gets the staged folder as it is; a day that other files share is rewritten
    by Spark (the other files' rows read back, the new ones added) into staging first; a day where this
    run's files had rows but now have none loses them. Then one all-or-nothing publish (journalled,
    fenced). Returns the days by what happened to them (for the summary).
    """
    out = cfg.output.rstrip("/")
    store = pub.store
    days = set(kept_days)
    while True:
        pub.hold(f"{out}/dt={d}" for d in days)
        found, others = _table_days(spark, store, out, files, days)
        if found <= days:
            break
        days |= found  # more days to hold: taken in order with the others (a later pass reads them again)
    merged = sorted(d for d in days if others.get(d))
    if merged and isinstance(store, ArrowStore):  # Python tasks read the table with pyarrow (S3 needs no Hadoop jars)
        task = functools.partial(_merge_day, out, events, f"{staging}/merged", frozenset(files), frozenset(kept_days))
        spark.sparkContext.parallelize(merged, len(merged)).foreach(task)
    elif merged:
        from pyspark.sql import functions as F

        rest = read_events(spark, out).where(F.col("dt").isin(merged) & ~F.col("source_file").isin(files))
        new = read_events(spark, events).where(F.col("dt").isin(merged)) if kept_days & set(merged) else None
        staged = rest if new is None else rest.unionByName(new)
        write_staged(staged, f"{staging}/merged", ["dt"], cfg.files_per_day)
    moves: list[tuple[str | None, str]] = []
    for d in sorted(days):
        src = f"{staging}/merged/dt={d}" if d in others else f"{events}/dt={d}" if d in kept_days else None
        moves.append((src, f"{out}/dt={d}"))
    if moves:
        pub.replace_folders(moves, f"{staging}/_replaced", _journal(cfg, "events"))
    return {
        "days_replaced": sorted(d for d in days if d in kept_days and d not in others),
        "days_merged": merged,
        "days_emptied": sorted(d for d in days if d not in kept_days and d not in others),
    }


def _table_days(
    spark, store: ArrowStore | HadoopStore, out: str, files: list[str], days: set[str]
) -> tuple[set[str], dict[str, int]]:
    """The table's days that hold rows of ``files``, and per day of those and ``days`` its rows of other files."""
    if not store.exists(out):
        return set(), {}
    if isinstance(store, ArrowStore):
        found = _day_folders(out)
        tasks = spark.sparkContext.parallelize(found, max(1, min(len(found), 64)))
        counts = tasks.map(functools.partial(_count_day, out, frozenset(files))).collect()
        ours = {d for d, n_ours, _ in counts if n_ours}
        return ours, {d: n for d, _, n in counts if n and d in days | ours}
    from pyspark.sql import functions as F

    table = read_events(spark, out)
    mine = F.col("source_file").isin(files)
    # The days earlier runs wrote these files' rows to: a scan of the source_file column, where
    # Parquet's statistics skip the files written from other logs (each file holds one log's rows).
    ours = present_days(table.where(mine))
    if not days | ours:
        return ours, {}
    rest = table.where(F.col("dt").isin(sorted(days | ours)) & ~mine)
    return ours, {str(r["dt"]): int(r["count"]) for r in rest.groupBy("dt").count().collect()}


def _event_schema():
    """The events table's file schema, as the ``arrow`` engine writes it (other writers' files are cast to it)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("entity", pa.string()),
            ("ip", pa.string()),
            ("ip_int", pa.int64()),
            ("ip_version", pa.int32()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("source_file", pa.dictionary(pa.int32(), pa.string())),
            *((name, pa.dictionary(pa.int32(), pa.string())) for name in logparse.AGENT_FIELDS),
        ]
    )


def _day_folders(table: str) -> list[str]:
    """The days (``dt=`` folders) of an events table, by listing (pyarrow)."""
    import pyarrow.fs as pafs

    fs, path = arrow_fs(table)
    infos = fs.get_file_info(pafs.FileSelector(path))
    return sorted(i.base_name[3:] for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("dt="))


def _parquet_files(folder: str) -> list[tuple[Any, str]]:
    """(filesystem, path) of the Parquet files of one flat folder (as Spark reads it: no _ or . names)."""
    import pyarrow.fs as pafs

    fs, path = arrow_fs(folder)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path))
    return [(fs, i.path) for i in infos if i.type == pafs.FileType.File and not i.base_name.startswith(("_", "."))]


def _count_day(table: str, files: frozenset[str], day: str) -> tuple[str, int, int]:
    """A task: (day, rows of ``files``, rows of other files) in the table's folder of ``day``. A row group
    whose source_file statistics hold one file is counted from the footer; others read that column only."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ours = rest = 0
    value_set = _strings(sorted(files))
    for fs, path in _parquet_files(f"{table}/dt={day}"):
        with fs.open_input_file(path) as fh:
            pf = pq.ParquetFile(fh)
            col = pf.schema_arrow.get_field_index("source_file")  # flat schema: the Parquet column too
            for g in range(pf.metadata.num_row_groups):
                meta = pf.metadata.row_group(g)
                stats = meta.column(col).statistics
                exact = (
                    stats is not None and getattr(stats, "is_min_exact", True) and getattr(stats, "is_max_exact", True)
                )
                if exact and stats.has_min_max and stats.min == stats.max:
                    mine = str(stats.min) in files
                    ours, rest = ours + meta.num_rows * mine, rest + meta.num_rows * (not mine)
                    continue
                values = pf.read_row_group(g, columns=["source_file"]).column(0).cast("string")
                n = pc.sum(pc.is_in(values, value_set=value_set)).as_py() or 0
                ours, rest = ours + n, rest + meta.num_rows - n
    return day, ours, rest


def _strings(values: list[str]) -> Any:
    import pyarrow as pa

    return pa.array(values, pa.string())


def _merge_day(table: str, events: str, merged: str, files: frozenset[str], kept: frozenset[str], day: str) -> None:
    """A task: the table's rows of ``day`` from files other than ``files``, then this run's staged rows
    of it, into ``merged/dt=DAY/``: one Parquet file, written a row group at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = _event_schema()
    value_set = _strings(sorted(files))
    with parquet_writer(f"{merged}/dt={day}/part-00000.parquet", schema) as writer:
        sources = [(f, True) for f in _parquet_files(f"{table}/dt={day}")]
        if day in kept:
            sources += [(f, False) for f in _parquet_files(f"{events}/dt={day}")]
        for (fs, path), old in sources:
            with fs.open_input_file(path) as fh:
                pf = pq.ParquetFile(fh)
                # A file written before the user agent's columns has none: they read as nulls.
                names = [n for n in schema.names if n in pf.schema_arrow.names]
                for batch in pf.iter_batches(columns=names):
                    t = pa.Table.from_batches([batch])
                    if old:
                        t = t.filter(pc.invert(pc.is_in(t.column("source_file").cast("string"), value_set=value_set)))
                    if len(t):
                        cols = [
                            t.column(f.name).cast(f.type) if f.name in names else pa.nulls(len(t), f.type)
                            for f in schema
                        ]
                        writer.write_table(pa.Table.from_arrays(cols, schema=schema))


def _check_days(spark, cfg: IngestConfig) -> None:
    """Refuse a dated run where a day's input matches no log file, naming every such day and its pattern
    (before anything is read or written): a day without logs is a gap upstream, never a quiet day.
    ``spark``: look through its Hadoop filesystems (the ``spark`` engine's), else through ``pyarrow.fs``."""
    missing = [(day, pattern, uri) for uri, day, pattern in cfg.dated_inputs() if day and not has_log_files(uri, spark)]
    if missing:
        days = "; ".join(f"{day}: {pattern!r} matches no log file ({uri})" for day, pattern, uri in missing)
        raise FileNotFoundError(f"no logs for {len(missing)} of the run's inputs: {days}")


def _journal(cfg: IngestConfig, what: str) -> str:
    """Where a publish of this run keeps its journal: beside the runs' staging folders, where the next
    run looks for interrupted publishes before anything else."""
    return f"{cfg.output.rstrip('/')}_staging/{JOURNAL_PREFIX}{cfg.run_id}-{what}.json"


def run_ingest(spark, cfg: IngestConfig) -> dict[str, Any]:
    """Run one ingest; returns the summary (also written to ``cfg.summary`` and logged).

    Raises :class:`BadInputError` (after writing the quarantine and the summary, but no events) when
    the bad-line ratio exceeds ``cfg.quality.max_bad_ratio``.
    """
    started = time.perf_counter()
    engine = cfg.resolved_engine()
    root = f"{cfg.output.rstrip('/')}_staging"
    staging = f"{root}/run_id={cfg.run_id}"
    store = ArrowStore() if engine == "arrow" else HadoopStore(spark)
    _check_days(spark if engine == "spark" else None, cfg)
    with Publisher(store, root, cfg.run_id, cfg.lease, spark) as pub:
        # An earlier attempt of this run killed in the middle of its publish left a journal: settle it
        # (other runs' interrupted publishes are settled under the leases of what they touched).
        pub.settle(cfg.run_id)
        store.delete(staging)  # what a crashed run with this id left
        keep_staging = False
        try:
            return _ingest(spark, cfg, pub, staging, started, engine)
        except (PublishError, LeaseLostError) as exc:
            # PublishError: staging holds an old day that could not be put back; LeaseLostError: the run
            # that took this one's lease over settles its publish from staging. Never delete it.
            keep_staging = True
            log.error("%s; staging kept at %s", exc, staging)
            raise
        finally:
            if not keep_staging:
                store.delete(staging)


def _ingest(spark, cfg: IngestConfig, pub: Publisher, staging: str, started: float, engine: str) -> dict[str, Any]:
    """:func:`run_ingest` from staging on (the run's staging folder and leases are its caller's)."""
    store = pub.store
    json_via = None if engine == "arrow" else spark  # the summary goes where the engine's files go
    if isinstance(store, ArrowStore):
        rows, files = _stage_arrow(spark, cfg, staging, store)
        events = f"{staging}/events"
        target = f"{cfg.quarantine.rstrip('/')}/run_id={cfg.run_id}"

        def quarantine_rows() -> None:
            pub.hold([target])
            pub.replace_folders(
                [(f"{staging}/quarantine", target)], f"{staging}/_replaced_quarantine", _journal(cfg, "quarantine")
            )
            pub.leases.release([target])

    else:
        rows, quarantine_rows, files = _stage_spark(spark, cfg, staging)
        events = f"{staging}/outcome={logparse.KEPT}"
    summary = _summarise(rows, cfg)
    summary["engine"] = engine
    summary["config"] = config_to_dict(cfg)
    if summary["quarantined"]:
        quarantine_rows()
    q = cfg.quality
    if summary["bad_ratio"] > q.max_bad_ratio:
        summary["status"] = "failed: bad-line ratio exceeded"
        summary["seconds"] = round(time.perf_counter() - started, 3)
        write_json(cfg.summary, summary, json_via)
        log.error("ingest summary: %s", _brief(summary))
        raise BadInputError(
            f"{summary['quarantined']} of {summary['lines_read']} lines are bad "
            f"(ratio {summary['bad_ratio']:.4f} > max_bad_ratio {q.max_bad_ratio}); no events written. "
            f"By reason: {summary['quarantined_by_reason']}; quarantine: {cfg.quarantine}/run_id={cfg.run_id}",
            summary,
        )
    if not summary["kept"]:
        log.warning("no events kept from %s", cfg.resolved_inputs())
    files = sorted(set(files) | set(summary["per_file"]))  # the rows' own spelling of each file
    summary.update(_publish_events(spark, pub, cfg, staging, events, files, set(summary["kept_by_day"])))
    summary["status"] = "ok"
    summary["seconds"] = round(time.perf_counter() - started, 3)
    write_json(cfg.summary, summary, json_via)
    log.info("ingest summary: %s", _brief(summary))
    return summary


def _brief(summary: dict[str, Any]) -> str:
    keys = (
        "run_id",
        "status",
        "lines_read",
        "kept",
        "filtered_out",
        "quarantined",
        "quarantined_by_reason",
        "bad_ratio",
        "kept_by_day",
        "engine",
        "seconds",
    )
    return ", ".join(f"{k}={summary.get(k)}" for k in keys)
