"""All reading and writing of data sets lives here (CSV files in SageMaker's format; Spark tables).

Readers return Arrow tables (for the single-process tools) or Spark DataFrames (for the jobs);
writers never leave a half-written output behind: files are written to a temporary name in the same
directory and renamed into place, and Spark tables are written with dynamic partition overwrite.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

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


# --------------------------------------------------------------------------- logs read by Python tasks

#: Compressed logs by extension (none of them can be split: one task reads such a file whole).
LOG_CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}


def arrow_fs(uri: str):
    """(``pyarrow.fs`` filesystem, path) for a local path, ``file://`` or ``s3://``/``s3a://`` URI.

    S3 credentials, region and endpoint come from the AWS defaults (environment, profile, instance
    role; ``AWS_ENDPOINT_URL`` for another S3 API), the same on the driver and on every executor.
    """
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif uri.startswith("file:"):
        uri = uri[len("file:") :]  # Hadoop's spelling of a local file, file:/path
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).absolute())
    scheme, rest = uri.split("://", 1)
    if scheme in ("s3", "s3a", "s3n"):
        # The bucket alone goes through URI parsing (a key may hold glob characters URIs refuse).
        return _s3_filesystem(rest.split("/", 1)[0]), rest.rstrip("/")
    return pafs.FileSystem.from_uri(uri)


@functools.lru_cache(maxsize=64)
def _s3_filesystem(bucket: str):
    return pafs.FileSystem.from_uri(f"s3://{bucket}")[0]  # resolves the bucket's region once


def _arrow_uri(like: str, path: str) -> str:
    """A path from ``arrow_fs(like)``'s filesystem, back in the form of ``like`` (scheme and all)."""
    if "://" not in like:
        return path
    scheme = like.split("://", 1)[0]
    return f"file://{path}" if scheme == "file" else f"{scheme}://{path}"


ARROW_SCHEMES = ("file", "s3", "s3a", "s3n")


def arrow_readable(uri: str) -> bool:
    """True where :func:`arrow_fs` serves ``uri`` (local paths, ``file://``, S3)."""
    return "://" not in uri or uri.split("://", 1)[0] in ARROW_SCHEMES


def _glob_regex(pattern: str):
    """A Hadoop-style glob (``*``, ``?``, ``[..]``, ``{a,b}``; none crosses a '/') as a compiled regex."""
    import re

    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                out.append("[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]")
                i = j
        elif c == "{":
            j = pattern.find("}", i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                out.append("(?:" + "|".join(re.escape(a) for a in pattern[i + 1 : j].split(",")) + ")")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


@dataclass(frozen=True)
class LogSplit:
    """Bytes ``[start, end)`` of one log file: the lines that *start* in that range (a task's input)."""

    uri: str
    start: int
    end: int
    codec: str | None = None  # compressed files are read whole (start 0, end = the file's size)


def list_log_files(paths: Iterable[str]) -> list[tuple[str, int]]:
    """(URI, size) of every log file that ``paths`` names: files, folders (their files) or globs.

    Local files come back as ``file:/abs/path``, other URIs in the scheme they were given in.

    As Spark's text source does: names starting with '_' or '.' are skipped, and a path or glob that
    matches nothing is an error (a typo must not make an empty, successful run).
    """
    found: dict[str, int] = {}
    for uri in paths:
        fs, path = arrow_fs(uri)
        if any(c in path for c in "*?[{"):
            cut = min(path.index(c) for c in "*?[{" if c in path)
            base = path[: path.rfind("/", 0, cut) + 1] or "/"
            rx = _glob_regex(path)
            infos = fs.get_file_info(pafs.FileSelector(base.rstrip("/") or "/", recursive=True, allow_not_found=True))
            hits = [i for i in infos if rx.fullmatch(i.path)]
            files = [i for i in hits if i.type == pafs.FileType.File]
            for d in (i for i in hits if i.type == pafs.FileType.Directory):
                files += [i for i in fs.get_file_info(pafs.FileSelector(d.path)) if i.type == pafs.FileType.File]
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.Directory:
                files = [i for i in fs.get_file_info(pafs.FileSelector(path)) if i.type == pafs.FileType.File]
            else:
                files = [info] if info.type == pafs.FileType.File else []
        files = [f for f in files if not f.base_name.startswith(("_", "."))]
        if not files:
            raise FileNotFoundError(f"no log files at {uri!r}")
        for f in files:
            # Named as Spark's text source names them (file:/path), so that a table's source_file
            # values do not depend on the engine that wrote them.
            found[f"file:{f.path}" if fs.type_name == "local" else _arrow_uri(uri, f.path)] = f.size
    return sorted(found.items())


def plan_log_splits(files: list[tuple[str, int]], split_bytes: int) -> list[LogSplit]:
    """Cut (URI, size) files into splits of at most ``split_bytes`` (compressed files stay whole)."""
    splits = []
    for uri, size in files:
        codec = next((c for ext, c in LOG_CODECS.items() if uri.endswith(ext)), None)
        if codec or size <= split_bytes:
            splits.append(LogSplit(uri, 0, size, codec))
        else:  # equal pieces: 80 MB at 64 MB splits makes two of 40, not 64 + 16
            step = -(-size // -(-size // split_bytes))
            splits += [LogSplit(uri, s, min(size, s + step)) for s in range(0, size, step)]
    return splits


def _lines_of(data: bytes) -> pa.StringArray:
    """The ``\n``-terminated lines of ``data`` (a trailing ``\r`` dropped) as one Arrow array, no Python loop.

    The bytes are not decoded: a line that is not UTF-8 stays as it is, for the parser to quarantine.
    """
    import numpy as np
    import pyarrow.compute as pc

    buf = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(buf == 10)
    if len(buf) and buf[-1] != 10:
        ends = np.append(ends, len(buf))  # a last line with no newline
    offsets = np.empty(len(ends) + 1, np.int64)
    offsets[0], offsets[1:] = 0, np.minimum(ends + 1, len(buf))
    lines = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(data))
    # Each line still holds its newline: trimmed on the bytes (ascii_rtrim never decodes).
    return pc.ascii_rtrim(lines.view(pa.large_binary()).cast(pa.binary()).view(pa.string()), "\r\n")


def iter_split_lines(split: LogSplit, block_bytes: int = 16 << 20) -> Iterator[pa.StringArray]:
    """The lines of ``split`` in arrays of about ``block_bytes`` each (memory stays bounded).

    A split owns the lines that start in ``[start, end)``: it skips the partial line it starts in
    (the previous split reads it) and reads on past ``end`` to the end of its last line, as Hadoop's
    line reader does, so that every line is read exactly once whatever the split size.
    """
    fs, path = arrow_fs(split.uri)
    raw = fs.open_input_file(path) if split.codec is None else fs.open_input_stream(path, compression=split.codec)
    limit = None if split.codec else split.end
    with raw as f:
        carry, carry_pos = b"", 0  # bytes read but not yet yielded, and the file position of their first
        if split.start:
            f.seek(split.start - 1)
            carry_pos = split.start - 1
            while True:  # skip to just past the first newline at or after start - 1
                block = f.read(1 << 16)
                if not block:
                    return
                nl = block.find(b"\n")
                if nl >= 0:
                    carry, carry_pos = block[nl + 1 :], carry_pos + nl + 1
                    break
                carry_pos += len(block)
        while limit is None or carry_pos < limit:  # the line starting at carry_pos is ours
            block = f.read(block_bytes)
            data = carry + block
            if limit is not None and carry_pos + len(data) > limit:
                # Our last line is the one holding byte limit - 1: it ends at the first newline from there.
                last = data.find(b"\n", limit - 1 - carry_pos)
                if last >= 0:
                    yield _lines_of(data[: last + 1])
                    return
            if not block:  # end of file: the rest is our last line (it has no newline)
                if data:
                    yield _lines_of(data)
                return
            cut = data.rfind(b"\n") + 1
            if cut:
                yield _lines_of(data[:cut])
            carry, carry_pos = data[cut:], carry_pos + cut


def write_parquet(table: pa.Table, uri: str) -> str:
    """Write ``table`` as one Parquet file at ``uri`` (through :func:`arrow_fs`); returns ``uri``.

    As the Spark engine's staged files: LZ4, dictionary encoding only for ``source_file`` (whose
    values repeat in long runs; for the rest it cost more CPU than it saved).
    """
    import pyarrow.parquet as pq

    fs, path = arrow_fs(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    dictionary = [c for c in table.column_names if c == "source_file"]
    pq.write_table(table, path, filesystem=fs, compression="lz4", use_dictionary=dictionary)
    return uri


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
    # rows and most kinds of bad line. Past the limit Spark sorts the rest of the task's rows: at 8,
    # with 9 reasons to quarantine, it sorted most of them (a third of the write's CPU). The writers of
    # rare outcomes stay small: a Parquet writer's buffers grow with what it is given.
    conf = {**PARTITIONED_WRITE_CONF, "spark.sql.maxConcurrentOutputFileWriters": "32"}
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
    return HadoopStore(spark).delete(path)


class HadoopStore:
    """Folder and file operations on URIs through the Spark job's Hadoop filesystems (its credentials)."""

    def __init__(self, spark: SparkSession):
        self._spark = spark

    def _path(self, uri: str):
        return _fs_path(self._spark, uri)

    def exists(self, uri: str) -> bool:
        fs, p = self._path(uri)
        return bool(fs.exists(p))

    def mkdirs(self, uri: str) -> None:
        fs, p = self._path(uri)
        fs.mkdirs(p)

    def delete(self, uri: str) -> bool:
        fs, p = self._path(uri)
        return bool(fs.exists(p) and fs.delete(p, True))

    def rename(self, src: str, dst: str) -> None:
        fs, s = self._path(src)
        if not fs.rename(s, self._path(dst)[1]):
            raise OSError(f"could not move {src} to {dst}")

    def list_files(self, uri: str) -> list[str]:
        fs, p = self._path(uri)
        if not fs.exists(p):
            return []
        return [str(st.getPath().toUri()) for st in fs.listStatus(p) if st.isFile()]


class ArrowStore:
    """The same operations through ``pyarrow.fs`` (local disks and S3; ``s3a://`` is read as ``s3://``),
    for jobs whose Python tasks read and write the files themselves."""

    def exists(self, uri: str) -> bool:
        fs, p = arrow_fs(uri)
        return fs.get_file_info(p).type != pafs.FileType.NotFound

    def mkdirs(self, uri: str) -> None:
        fs, p = arrow_fs(uri)
        fs.create_dir(p, recursive=True)

    def delete(self, uri: str) -> bool:
        fs, p = arrow_fs(uri)
        kind = fs.get_file_info(p).type
        if kind == pafs.FileType.Directory:
            fs.delete_dir(p)
        elif kind == pafs.FileType.File:
            fs.delete_file(p)
        return kind != pafs.FileType.NotFound

    def rename(self, src: str, dst: str) -> None:
        fs, s = arrow_fs(src)
        d = arrow_fs(dst)[1]
        if fs.type_name == "local" or fs.get_file_info(s).type == pafs.FileType.File:
            fs.move(s, d)  # a local rename is one metadata operation
            return
        # Object stores have no folders to rename: move each object (a copy and a delete).
        for info in fs.get_file_info(pafs.FileSelector(s, recursive=True)):
            if info.type == pafs.FileType.File:
                fs.move(info.path, d + info.path[len(s) :])
        fs.delete_dir(s)

    def list_files(self, uri: str) -> list[str]:
        fs, p = arrow_fs(uri)
        if fs.get_file_info(p).type != pafs.FileType.Directory:
            return []
        return [_arrow_uri(uri, i.path) for i in fs.get_file_info(pafs.FileSelector(p)) if i.type == pafs.FileType.File]


def replace_folders(store: HadoopStore | ArrowStore, moves: Iterable[tuple[str, str]], trash: str) -> None:
    """Move each ``src`` folder to ``dst``, replacing what was there (dynamic partition overwrite).

    Per folder: the old one is renamed into ``trash``, the new one renamed into place, then the old
    one deleted. On HDFS and local disks each rename is one metadata operation, so a reader sees the
    old folder or the new one (and at worst, between the two renames, briefly none). On S3 a rename is
    a copy: there a reader can briefly see a folder missing or partly copied; use a table format
    (Delta/Iceberg) for that. ``trash`` must be on the same filesystem (a sibling is).
    """
    store.mkdirs(trash)
    for i, (src, dst) in enumerate(moves):
        old = f"{trash.rstrip('/')}/{i}"
        if store.exists(dst):
            store.rename(dst, old)
        else:
            store.mkdirs(dst.rstrip("/").rsplit("/", 1)[0])
        try:
            store.rename(src, dst)
        except OSError as exc:
            raise OSError(f"{exc} (the folder it replaces is in {old})") from None
        store.delete(old)


def publish_partitions(
    store: HadoopStore | ArrowStore, staged: str, table: str, days: Iterable[str], trash: str
) -> None:
    """Move each staged ``dt=DAY`` folder of ``staged`` into ``table``, replacing that day's folder.

    A rerun of a day therefore replaces it, never duplicates it, and days not in ``days`` are left
    alone. See :func:`replace_folders` for what a reader can see meanwhile.
    """
    moves = [(f"{staged.rstrip('/')}/dt={d}", f"{table.rstrip('/')}/dt={d}") for d in sorted(set(days))]
    replace_folders(store, moves, trash)


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
    fs, p = arrow_fs(path)
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
    return HadoopStore(spark).exists(path)


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
