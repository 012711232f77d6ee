"""Ingest: raw access logs -> a ``dt``-partitioned Parquet table of (entity, ip, ts) events.

One pass over the logs: every line is classified once (:func:`ipinsights.logparse.classify_lines`)
and written, narrow, to the run's staging folder (``<output>_staging/run_id=<run>``) partitioned by
outcome and day. Then, reading only the staged metadata-like columns, one small aggregation counts
outcomes per file and day; the bad-line ratio is checked; and only then are the staged event files
moved into the table (replacing their days), the quarantine written from the staged bad lines and the
summary saved. A run that fails the ratio check has replaced no partition of the main table.

Why staging rather than caching the classified rows and writing from the cache: the logs are parsed
once either way, but building Spark's in-memory cache cost more CPU than the Parquet write it fed,
and the event files are written once, in their final form, and then only renamed.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ipinsights import io, logparse
from ipinsights.config import ConfigError, _check_float, _check_int, config_to_dict

__all__ = [
    "BadInputError",
    "EntityOptions",
    "IngestConfig",
    "QualityOptions",
    "ResourceFilter",
    "run_ingest",
]

log = logging.getLogger(__name__)

_STAGED_SCHEMA = (
    "entity string, ip string, ip_int long, ip_version int, ts timestamp, source_file string, outcome string, dt string"
)


class BadInputError(RuntimeError):
    """Too many bad lines: the run wrote no events. ``summary`` holds the counts that decided it."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


@dataclass(frozen=True)
class ResourceFilter:
    """Which requests are the events to learn from (default: successful ``GET /login_success``).

    ``methods``/``statuses`` empty means any. ``path_match``: ``exact``, ``prefix`` or ``regex`` (a Java
    regex that must match the whole path). The path is compared without its query string.
    """

    methods: tuple[str, ...] = ("GET",)
    path: str = "/login_success"
    path_match: str = "exact"
    statuses: tuple[int, ...] = (200,)

    def __post_init__(self) -> None:
        if self.path_match not in logparse.PATH_MATCH_MODES:
            raise ConfigError(f"path_match={self.path_match!r} must be one of {', '.join(logparse.PATH_MATCH_MODES)}")
        if not self.path:
            raise ConfigError("path must not be empty (use path_match=regex and path=.* for any path)")
        if self.path_match == "regex":
            try:  # Java and Python regexes agree on everything a path pattern needs; catch typos early.
                re.compile(self.path)
            except re.error as exc:
                raise ConfigError(f"path={self.path!r} is not a valid regex: {exc}") from None
        for m in self.methods:
            if not re.fullmatch(r"[A-Za-z]+", m):
                raise ConfigError(f"methods: {m!r} is not an HTTP method")
        for s in self.statuses:
            _check_int("statuses[]", s, 100, 999)
        object.__setattr__(self, "methods", tuple(m.upper() for m in self.methods))


@dataclass(frozen=True)
class EntityOptions:
    """Where the entity comes from: ``user`` (authenticated user, default), ``ident``, ``user_agent``,
    ``referer``, or ``query`` (the URL query parameter ``query_param``, URL-decoded)."""

    field: str = "user"
    query_param: str = ""

    def __post_init__(self) -> None:
        if self.field not in logparse.ENTITY_FIELDS:
            raise ConfigError(f"entity.field={self.field!r} must be one of {', '.join(logparse.ENTITY_FIELDS)}")
        if self.field == "query" and not self.query_param:
            raise ConfigError("entity.field=query needs entity.query_param (the parameter's name)")


@dataclass(frozen=True)
class QualityOptions:
    """Bad-line handling. The run fails (writing no events) when quarantined/read > ``max_bad_ratio``."""

    max_bad_ratio: float = 0.05
    max_line_length: int = 8192
    raw_max_chars: int = 2048

    def __post_init__(self) -> None:
        _check_float("max_bad_ratio", self.max_bad_ratio, 0.0, 1.0)
        _check_int("max_line_length", self.max_line_length, 64, 1 << 24)
        _check_int("raw_max_chars", self.raw_max_chars, 16, 1 << 20)


@dataclass(frozen=True)
class IngestConfig:
    """Everything an ingest run needs, as loaded from ``conf/ingest.yml`` plus overrides.

    ``quarantine`` defaults to ``<output>_quarantine`` and ``summary`` to
    ``<output>_summaries/<run_id>.json``; ``run_id`` defaults to the UTC start time.
    """

    inputs: tuple[str, ...] = ()
    output: str = ""
    quarantine: str = ""
    summary: str = ""
    run_id: str = ""
    files_per_day: int = 0
    resource: ResourceFilter = field(default_factory=ResourceFilter)
    entity: EntityOptions = field(default_factory=EntityOptions)
    quality: QualityOptions = field(default_factory=QualityOptions)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("inputs is required: --inputs=PATH[,PATH...] (files, globs, s3:// URIs)")
        if not self.output:
            raise ConfigError("output is required: --output=PATH (the dt-partitioned Parquet table)")
        _check_int("files_per_day", self.files_per_day, 0, 10_000)
        if self.run_id and not re.fullmatch(r"[A-Za-z0-9_.:-]+", self.run_id):
            raise ConfigError(f"run_id={self.run_id!r} may only hold letters, digits and _.:-")
        run_id = self.run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = self.output.rstrip("/")
        object.__setattr__(self, "run_id", run_id)
        object.__setattr__(self, "quarantine", self.quarantine or f"{out}_quarantine")
        object.__setattr__(self, "summary", self.summary or f"{out}_summaries/{run_id}.json")


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
        "inputs": list(cfg.inputs),
        "output": cfg.output,
        "quarantine": cfg.quarantine,
        **totals,
        "quarantined_by_reason": dict(sorted(by_reason.items())),
        "bad_ratio": round(ratio, 6),
        "max_bad_ratio": cfg.quality.max_bad_ratio,
        "kept_by_day": dict(sorted(days.items())),
        "per_file": dict(sorted(per_file.items())),
    }


def run_ingest(spark, cfg: IngestConfig) -> dict[str, Any]:
    """Run one ingest; returns the summary (also written to ``cfg.summary`` and logged).

    Raises :class:`BadInputError` (after writing the quarantine and the summary, but no events) when
    the bad-line ratio exceeds ``cfg.quality.max_bad_ratio``.
    """
    from pyspark.sql import functions as F

    started = time.perf_counter()
    lines = io.read_log_lines(spark, list(cfg.inputs))
    r, e, q = cfg.resource, cfg.entity, cfg.quality
    classified = logparse.classify_lines(
        lines,
        methods=r.methods,
        path=r.path,
        path_match=r.path_match,
        statuses=r.statuses,
        entity_field=e.field,
        query_param=e.query_param,
        max_line_length=q.max_line_length,
        raw_max_chars=q.raw_max_chars,
    )
    outcome = F.col("outcome")
    kept = outcome == logparse.KEPT
    bad = logparse.quarantined(outcome)
    # One schema for every staged file, so that the event files move into the table as written: the
    # events' columns plus their source file; a bad line's raw text rides in ``entity`` (a filtered
    # line keeps only its file, for the counts).
    staged = classified.select(
        F.when(kept, F.col("entity")).when(bad, F.col("raw")).alias("entity"),
        *(F.col(c) for c in ("ip", "ip_int", "ip_version", "ts", "source_file")),
        outcome,
        F.col("dt").cast("string").alias("dt"),
    )
    staging = f"{cfg.output.rstrip('/')}_staging/run_id={cfg.run_id}"
    try:
        io.write_staged(staged, staging, ["outcome", "dt"], cfg.files_per_day)
        done = spark.read.schema(_STAGED_SCHEMA).parquet(io.resolve_uri(spark, staging))
        # Every count of the summary from one small aggregation over the staged file and partition columns.
        rows = done.groupBy("source_file", "outcome", "dt").count().collect()
        summary = _summarise(rows, cfg)
        summary["config"] = config_to_dict(cfg)
        if summary["quarantined"]:
            bad_rows = done.where(logparse.quarantined(F.col("outcome")))
            io.write_quarantine(
                bad_rows.select(F.col("outcome").alias("reason"), "source_file", F.col("entity").alias("raw")),
                cfg.quarantine,
                cfg.run_id,
            )
        if summary["bad_ratio"] > q.max_bad_ratio:
            summary["status"] = "failed: bad-line ratio exceeded"
            summary["seconds"] = round(time.perf_counter() - started, 3)
            io.write_json(cfg.summary, summary, spark)
            log.error("ingest summary: %s", _brief(summary))
            raise BadInputError(
                f"{summary['quarantined']} of {summary['lines_read']} lines are bad "
                f"(ratio {summary['bad_ratio']:.4f} > max_bad_ratio {q.max_bad_ratio}); no events written. "
                f"By reason: {summary['quarantined_by_reason']}; quarantine: {cfg.quarantine}/run_id={cfg.run_id}",
                summary,
            )
        if summary["kept"]:
            events = f"{staging}/outcome={logparse.KEPT}"
            io.publish_partitions(spark, events, cfg.output, summary["kept_by_day"], f"{staging}/_replaced")
        else:
            log.warning("no events kept from %s: nothing written to %s", list(cfg.inputs), cfg.output)
        summary["status"] = "ok"
        summary["seconds"] = round(time.perf_counter() - started, 3)
        io.write_json(cfg.summary, summary, spark)
        log.info("ingest summary: %s", _brief(summary))
        return summary
    finally:
        io.delete_tree(spark, staging)


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
        "seconds",
    )
    return ", ".join(f"{k}={summary.get(k)}" for k in keys)
