"""All reading and writing of data sets lives here (CSV files in SageMaker's format; Spark tables).

Readers return Arrow tables (for the single-process tools) or Spark DataFrames (for the jobs);
writers never leave a half-written output behind: files are written to a temporary name in the same
directory and renamed into place, and Spark tables are written with dynamic partition overwrite.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

__all__ = [
    "DataFormatError",
    "atomic_write",
    "read_pairs_csv",
    "read_labelled_csv",
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
