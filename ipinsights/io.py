"""All reading and writing of data sets lives here (CSV files in SageMaker's format; Spark tables).

Readers return Arrow tables (for the single-process tools) or Spark DataFrames (for the jobs);
writers never leave a half-written output behind: files are written to a temporary name in the same
directory and renamed into place, and Spark tables are written with dynamic partition overwrite.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.csv as pacsv

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "DataFormatError",
    "atomic_write",
    "read_pairs_csv",
    "read_labelled_csv",
    "read_parquet_files",
    "read_pairs_table",
    "write_frame",
    "copy_tree_atomic",
    "swap_dir_into_place",
]


class DataFormatError(ValueError):
    """An input file does not have the expected shape; the message names the file and line."""


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **kwargs) -> Iterator:
    """Open a temporary file beside ``path`` and rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs should get the usual permissions
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _line_number(path: Path, text: str) -> int | str:
    """1-based line of ``text`` in ``path`` (Arrow's multithreaded reader does not know it); error path only."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh, 1):
            if line.rstrip("\r\n") == text:
                return i
    return "?"


def _read_headerless_csv(path: str | Path, columns: list[str], min_columns: int) -> pa.Table:
    """Read a headerless CSV as strings; a row with the wrong number of fields is an error naming it."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataFormatError(f"{path}: file holds no rows")
    bad: list[str] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        # Keep the first few for the message; line numbers from Arrow are 1-based physical lines.
        if len(bad) < 5:
            line = row.number if row.number is not None else _line_number(path, row.text)
            bad.append(f"{path}:{line}: expected {row.expected_columns} fields, got {row.actual_columns}: {row.text!r}")
        return "error"

    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=columns, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid if min_columns == len(columns) else None),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in columns},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        detail = bad[0] if bad else f"{path}: {exc}"
        raise DataFormatError(f"{detail} (columns: {', '.join(columns)})") from None
    if table.num_rows == 0:
        raise DataFormatError(f"{path}: file holds no rows")
    return table


def read_pairs_csv(path: str | Path) -> pa.Table:
    """SageMaker's training format: headerless ``entity,ip`` rows -> table (entity, ip) of strings."""
    return _read_headerless_csv(path, ["entity", "ip"], 2)


def read_labelled_csv(path: str | Path) -> pa.Table:
    """Labelled evaluation rows ``entity,ip,label[,kind]`` (label 1 = anomalous, 0 = normal)."""
    path = Path(path)
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    n = first.count(",") + 1
    if n not in (3, 4):
        raise DataFormatError(f"{path}:1: expected 3 or 4 fields (entity,ip,label[,kind]), got {n}: {first!r}")
    columns = ["entity", "ip", "label", "kind"][:n]
    table = _read_headerless_csv(path, columns, n)
    try:
        labels = table["label"].cast(pa.int8())
    except pa.ArrowInvalid:
        raise DataFormatError(f"{path}: field 'label' (3rd) must be 0 or 1 on every line") from None
    table = table.set_column(table.schema.get_field_index("label"), "label", labels)
    if "kind" not in table.column_names:
        table = table.append_column("kind", pa.array(["all"] * table.num_rows, pa.string()))
    return table


# ---------------------------------------------------------------------------------------------
# Training buckets (written by the Spark driver, read by the training ranks)
# ---------------------------------------------------------------------------------------------


def write_buckets(df, path: str) -> None:
    """Write a bucketed training set (``bucket`` column) as ``path/bucket=K/*.parquet``, replacing it."""
    df.write.mode("overwrite").partitionBy("bucket").parquet(path)


def list_buckets(spark, path: str, n_buckets: int) -> list[list[str]]:
    """Files of each bucket (URIs as Spark lists them; works for any Hadoop file system)."""
    files = spark.read.parquet(path).inputFiles()
    out: list[list[str]] = [[] for _ in range(n_buckets)]
    for f in sorted(files):
        part = next((p for p in f.split("/") if p.startswith("bucket=")), None)
        if part is None:
            raise DataFormatError(f"{f}: not inside a bucket=K directory of {path}")
        out[int(part.split("=", 1)[1])].append(f)
    return out


def write_parquet_single(df, path: str) -> list[str]:
    """Write a small DataFrame as Parquet under ``path`` (replacing it) and return its file URIs."""
    df.write.mode("overwrite").parquet(path)
    return sorted(df.sparkSession.read.parquet(path).inputFiles())


def read_pairs_spark(spark, path: str):
    """SageMaker's headerless ``entity,ip`` CSV (file, directory or glob) as a DataFrame(entity, ip)."""
    return spark.read.csv(path, schema="entity string, ip string", header=False, mode="PERMISSIVE")


def read_events(spark, path: str, start_date: str | None = None, end_date: str | None = None):
    """The ingest job's events table, pruned to the ``dt`` partitions in [start_date, end_date]."""
    from pyspark.sql import functions as F

    df = spark.read.parquet(path)
    if start_date:
        df = df.where(F.col("dt") >= F.lit(start_date))
    if end_date:
        df = df.where(F.col("dt") <= F.lit(end_date))
    return df


# ---------------------------------------------------------------------------------------------
# Spark: raw access logs in, partitioned event tables out.
# ---------------------------------------------------------------------------------------------


def resolve_uri(spark, path: str) -> str:
    """Map ``s3://`` to ``s3a://`` when the cluster has no ``s3://`` filesystem (plain Apache Hadoop).

    EMR (EMRFS) and Databricks serve ``s3://`` themselves (``fs.s3.impl`` is set there), so the URI is
    left alone; local paths and other schemes pass through unchanged.
    """
    if path.startswith("s3://") and not spark.sparkContext._jsc.hadoopConfiguration().get("fs.s3.impl"):
        return "s3a://" + path[len("s3://") :]
    return path


def read_log_lines(spark, paths: str | list[str] | tuple[str, ...]):
    """Text or gzip logs -> DataFrame(``value`` string, ``source_file`` string), one row per line.

    ``paths`` are files, directories or globs: local, ``file://``, ``s3://``/``s3a://`` or anything
    with a Hadoop filesystem. ``.gz`` (and other Hadoop codecs) are decompressed by extension; a gzip
    file cannot be split, so one task reads it whole: prefer several files to one huge one.
    """
    from pyspark.sql import functions as F

    if isinstance(paths, str):
        paths = [paths]
    uris = [resolve_uri(spark, str(p)) for p in paths]
    if not uris:
        raise ValueError("read_log_lines: no input paths given")
    # wholetext=False: one row per line; Hadoop's reader handles \n, \r\n and \r endings.
    df = spark.read.format("text").load(uris)
    return df.select("value", F.col("_metadata.file_path").alias("source_file"))


#: Parquet options of the ingest's staged write. Dictionary encoding is off except where values
#: repeat in long runs (the source file): it was half of the writer's CPU (2.7 -> 1.5 CPU-us per event
#: row written, 2.5M events), and lz4_raw compresses the plain-encoded strings well enough, faster.
STAGED_PARQUET_OPTIONS = {
    "compression": "lz4_raw",
    "parquet.enable.dictionary": "false",
    "parquet.enable.dictionary#source_file": "true",
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
    # rows and a few kinds of bad line (past that, Spark sorts the rest of the task's rows).
    conf = {**PARTITIONED_WRITE_CONF, "spark.sql.maxConcurrentOutputFileWriters": "8"}
    with partitioned_write_settings(df.sparkSession, conf):
        writer = df.write.mode("overwrite").options(**STAGED_PARQUET_OPTIONS).partitionBy(*partition_by)
        writer.parquet(resolve_uri(df.sparkSession, path))


def _fs_path(spark: SparkSession, path: str):
    """(Hadoop FileSystem, Path) for ``path``: the same filesystem and credentials as the Spark job."""
    jvm = spark.sparkContext._jvm
    p = jvm.org.apache.hadoop.fs.Path(resolve_uri(spark, path))
    return p.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), p


def delete_tree(spark: SparkSession, path: str) -> bool:
    """Remove ``path`` and everything under it, if it exists (any Hadoop filesystem); True if removed."""
    fs, p = _fs_path(spark, path)
    return bool(fs.exists(p) and fs.delete(p, True))


def publish_partitions(spark: SparkSession, staged: str, table: str, days: Iterable[str], trash: str) -> None:
    """Move each staged ``dt=DAY`` folder of ``staged`` into ``table``, replacing that day's folder.

    A rerun of a day therefore replaces it, never duplicates it, and days not in ``days`` are left
    alone (dynamic partition overwrite, as Spark's own commit does it). Per day: the old folder is
    renamed into ``trash``, the staged one renamed into place, then the old one deleted; on HDFS and
    local disks each rename is one metadata operation, so a reader sees the old day or the new one
    (and at worst, between the two renames, briefly none). On S3 a rename is a copy: there a reader
    can briefly see a day missing or partly copied; use a table format (Delta/Iceberg) for that.
    ``staged`` and ``trash`` must be on the same filesystem as ``table`` (siblings are).
    """
    fs, root = _fs_path(spark, table)
    _, src_root = _fs_path(spark, staged)
    _, trash_root = _fs_path(spark, trash)
    jvm = spark.sparkContext._jvm
    fs.mkdirs(root)
    fs.mkdirs(trash_root)
    for day in sorted(set(days)):
        name = f"dt={day}"
        src, dst = jvm.org.apache.hadoop.fs.Path(src_root, name), jvm.org.apache.hadoop.fs.Path(root, name)
        old = jvm.org.apache.hadoop.fs.Path(trash_root, name)
        if fs.exists(dst) and not fs.rename(dst, old):
            raise OSError(f"could not move the old partition {dst} aside to {old}")
        if not fs.rename(src, dst):
            raise OSError(f"could not move the staged partition {src} to {dst} (the old one is in {old})")
        fs.delete(old, True)


def write_quarantine(df, path: str, run_id: str) -> None:
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


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local_path(path: str) -> Path:
    return Path(path[len("file://") :] if path.startswith("file://") else path)


def write_json(path: str, obj, spark=None) -> None:
    """Write ``obj`` as indented JSON, atomically: a reader sees the old file or the whole new one.

    Local paths use :func:`atomic_write`. Other URIs go through Hadoop's filesystem of ``spark`` when
    given (same credentials and settings as the Spark job; S3A makes an object visible only when its
    upload completes), else ``pyarrow.fs`` (S3 PUTs are atomic too).
    """
    import json

    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    if _is_local(path):
        with atomic_write(_local_path(path), "w", encoding="utf-8") as fh:
            fh.write(text)
        return
    if spark is not None:
        jvm = spark.sparkContext._jvm
        fs, hpath = _fs_path(spark, path)
        tmp = jvm.org.apache.hadoop.fs.Path(hpath.getParent(), f".{hpath.getName()}.tmp")
        out = fs.create(tmp, True)
        try:
            out.write(bytearray(text.encode("utf-8")))
        finally:
            out.close()
        # On object stores rename is a copy of one small object; on HDFS it is atomic.
        fs.delete(hpath, False)
        fs.rename(tmp, hpath)
        return
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(path)
    with fs.open_output_stream(p) as out:
        out.write(text.encode("utf-8"))


def write_pairs_csv_spark(df, path: str, single_file: bool = True) -> None:
    """Write ``entity,ip`` rows as headerless CSV (SageMaker's training format), atomically.

    Spark writes to a hidden sibling folder first; then either its single part file is renamed to
    ``path`` (``single_file``: one task writes it, fine for training sets of millions of rows) or the
    whole folder is swapped in as ``path`` (a directory of ``part-*.csv`` files). Readers never see a
    partial file; with the folder swap there is a moment where ``path`` does not exist.
    """
    import uuid

    spark = df.sparkSession
    jvm = spark.sparkContext._jvm
    fs, final = _fs_path(spark, path)
    tmp = jvm.org.apache.hadoop.fs.Path(final.getParent(), f".{final.getName()}.tmp-{uuid.uuid4().hex[:8]}")
    out = df.select("entity", "ip")
    if single_file:
        out = out.coalesce(1)
    # quote only when needed (an entity with a comma); no header, as SageMaker expects.
    out.write.mode("overwrite").option("header", "false").option("quoteAll", "false").csv(tmp.toString())
    try:
        if single_file:
            parts = [s.getPath() for s in fs.listStatus(tmp) if s.getPath().getName().startswith("part-")]
            if len(parts) != 1:
                raise OSError(f"expected one part file in {tmp}, found {len(parts)}")
            fs.delete(final, True)
            if not fs.rename(parts[0], final):
                raise OSError(f"could not rename {parts[0]} to {final}")
        else:
            old = jvm.org.apache.hadoop.fs.Path(final.getParent(), f".{final.getName()}.old-{uuid.uuid4().hex[:8]}")
            had_old = fs.exists(final) and fs.rename(final, old)
            if not fs.rename(tmp, final):
                raise OSError(f"could not rename {tmp} to {final}")
            if had_old:
                fs.delete(old, True)
    finally:
        if fs.exists(tmp):
            fs.delete(tmp, True)


# ---------------------------------------------------------------------------------------------
# Scoring job: day-partitioned tables that may not exist yet, and stale-partition removal
# ---------------------------------------------------------------------------------------------

#: The ingest job's events table (partition column ``dt`` read as a string, not inferred as a date).
EVENTS_SCHEMA = "entity string, ip string, ip_int long, ip_version int, ts timestamp, dt string"


def day_range(start: str, end: str) -> list[str]:
    """``YYYY-MM-DD`` days from ``start`` to ``end`` inclusive (refuses a reversed or malformed range)."""
    try:
        a, b = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    except ValueError as exc:
        raise ValueError(f"dates must look like 2024-01-31: {exc}") from None
    if b < a:
        raise ValueError(f"end date {end} is before start date {start}")
    return [(a + dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def _path_exists(spark: SparkSession, path: str) -> bool:
    fs, p = _fs_path(spark, path)
    return bool(fs.exists(p))


def read_table_days(spark: SparkSession, path: str, schema: str, days: Iterable[str]) -> DataFrame:
    """Rows of the ``dt``-partitioned Parquet table at ``path`` for ``days`` (partition-pruned).

    A table that does not exist yet reads as empty (a first run, or a day nobody ingested), not an error.
    """
    from pyspark.sql import functions as F

    days = sorted(set(days))
    if not _path_exists(spark, path):
        return spark.createDataFrame([], schema)
    df = spark.read.schema(schema).option("basePath", path).parquet(path)
    return df.where(F.col("dt").isin(days))


def read_events_days(spark: SparkSession, path: str, start: str, end: str) -> DataFrame:
    """The events table's rows for days ``start``..``end`` (UTC, inclusive): entity, ip, ip_int, ip_version, ts, dt."""
    return read_table_days(spark, path, EVENTS_SCHEMA, day_range(start, end))


def read_pairs_csv_spark(spark: SparkSession, path: str, day: str) -> DataFrame:
    """SageMaker batch-transform input: headerless ``entity,ip`` CSV, labelled with partition ``day``.

    Malformed rows stop the job (FAILFAST) rather than being scored as something else.
    """
    from pyspark.sql import functions as F

    df = spark.read.schema("entity string, ip string").option("header", "false").option("mode", "FAILFAST").csv(path)
    return df.select("entity", "ip", F.lit(None).cast("timestamp").alias("ts"), F.lit(day).alias("dt"))


def present_days(df: DataFrame) -> set[str]:
    """Distinct ``dt`` values of ``df`` (on a partitioned table this reads only file metadata)."""
    return {r["dt"] for r in df.select("dt").distinct().collect()}


#: Spark SQL settings of a ``partitionBy`` Parquet write (see :func:`partitioned_write_settings`).
PARTITIONED_WRITE_CONF = {
    # A planned write sorts every row by the partition columns first (a copy of each row into Spark's
    # sorter: ~0.7 CPU-us per scored row, a fifth of writing it). Without it, and with concurrent writers,
    # a task keeps one open file per day instead; past that many days in one task, Spark sorts the rest.
    "spark.sql.optimizer.plannedWrite.enabled": "false",
    # Each open writer buffers a row group: few, as a task of a daily table rarely holds more than a day or two.
    "spark.sql.maxConcurrentOutputFileWriters": "4",
}


@contextmanager
def partitioned_write_settings(spark: SparkSession, conf: dict[str, str] | None = None) -> Iterator[None]:
    """``PARTITIONED_WRITE_CONF`` (or ``conf``) in force inside the block, the session's own values restored after.

    Both settings are read when the write is planned and started, so they belong around the write call;
    the session's other work (before and after) keeps its settings.
    """
    conf = PARTITIONED_WRITE_CONF if conf is None else conf
    old = {key: spark.conf.get(key, None) for key in conf}
    for key, value in conf.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def write_partitions(df: DataFrame, path: str) -> None:
    """Write ``df`` partitioned by ``dt``, replacing only the days it holds (dynamic partition overwrite)."""
    with partitioned_write_settings(df.sparkSession):
        df.write.mode("overwrite").option("partitionOverwriteMode", "dynamic").partitionBy("dt").parquet(path)


def delete_partitions(spark: SparkSession, path: str, days: Iterable[str]) -> list[str]:
    """Remove the ``dt=DAY`` folders of ``days`` under ``path`` (any Hadoop file system); returns those removed."""
    return [day for day in sorted(set(days)) if delete_tree(spark, f"{path.rstrip('/')}/dt={day}")]


# ---------------------------------------------------------------------------------------------
# Tuning job: inputs in either format, small result tables, model directories copied into place
# ---------------------------------------------------------------------------------------------


def read_parquet_files(files: Iterable[str], columns: list[str]) -> pa.Table:
    """``columns`` of Parquet files listed by Spark (local paths, ``file:`` or ``s3a://`` URIs), one table.

    Executors use it to read what the driver wrote, by path: no data travels in a closure.
    """
    import pyarrow.parquet as pq

    tables = []
    for f in files:
        if f.startswith("file:"):
            f = "/" + f[len("file:") :].lstrip("/")
        elif f.startswith("s3a://"):
            f = "s3://" + f[len("s3a://") :]  # pyarrow's S3 filesystem knows only s3://
        tables.append(pq.read_table(f, columns=columns))
    if not tables:
        raise DataFormatError(f"no Parquet files to read (columns {columns})")
    return pa.concat_tables(tables)


def _looks_like_csv(path: str) -> bool:
    """A ``.csv``/``.txt`` name, or a local file or folder that holds no Parquet files."""
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    if name.endswith((".csv", ".csv.gz", ".txt", ".txt.gz")):
        return True
    if not _is_local(path) or any(c in path for c in "*?["):
        return False
    p = _local_path(path)
    if p.is_file():
        return not name.endswith(".parquet")
    return p.is_dir() and not any(p.rglob("*.parquet"))


def read_pairs_table(
    spark: SparkSession, path: str, fmt: str = "auto", start_date: str | None = None, end_date: str | None = None
) -> DataFrame:
    """(entity, ip) rows from the ingest job's events table or from SageMaker's headerless CSV.

    ``fmt``: ``events``, ``csv`` or ``auto`` (CSV for a ``.csv`` name or a local path without Parquet
    files, else the events table). Dates prune an events table's ``dt`` partitions; a CSV has no dates.
    """
    if fmt not in ("auto", "events", "csv"):
        raise ValueError(f"format {fmt!r} must be one of auto, events, csv")
    if fmt == "csv" or (fmt == "auto" and _looks_like_csv(path)):
        if start_date or end_date:
            raise ValueError(f"{path}: a CSV input has no days to select (dates apply to an events table)")
        return read_pairs_spark(spark, resolve_uri(spark, path)).select("entity", "ip")
    return read_events(spark, resolve_uri(spark, path), start_date, end_date).select("entity", "ip")


def write_frame(frame, path: str | Path) -> Path:
    """Write a small pandas DataFrame as CSV (with header) or Parquet, by suffix, atomically."""
    path = Path(path)
    if path.suffix == ".csv":
        with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
            frame.to_csv(fh, index=False)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        with atomic_write(path, "wb") as fh:
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), fh)
    else:
        raise ValueError(f"{path}: write_frame writes .csv or .parquet")
    return path


def copy_tree_atomic(src: str | Path, dst: str | Path) -> Path:
    """Copy directory ``src`` to ``dst`` (replacing it): copied beside ``dst``, then renamed into place."""
    import shutil

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        swap_dir_into_place(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def swap_dir_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished directory ``tmp`` to ``path``, replacing an existing one with two renames."""
    import shutil

    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
