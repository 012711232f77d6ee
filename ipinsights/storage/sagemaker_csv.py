"""SageMaker's CSV formats: headerless ``entity,ip`` training pairs and labelled ``entity,ip,label[,kind]``
rows, read in one process (Arrow) or on Spark, and written for batch transform.

One policy for every reader: a row with the wrong number of fields is an error
(:class:`~ipinsights.core.errors.DataFormatError` naming the file, the line and the row), raised before
any work uses the rows. Nothing is dropped or null-filled silently: a broken export must not train or
score as something else. Blank lines are no rows (both Arrow and Spark skip them).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.csv as pacsv

from ipinsights.core.config import ConfigError
from ipinsights.core.errors import DataFormatError
from ipinsights.storage.events import read_events
from ipinsights.storage.files import is_local, local_path
from ipinsights.storage.filesystems import arrow_fs, hadoop_path, jvm, resolve_uri

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: SageMaker's training format: headerless rows of these fields.
PAIRS_COLUMNS = ("entity", "ip")
_CORRUPT = "_corrupt_record"  # Spark's column for the raw text of a row that did not parse


def _line_number(uri: str, text: str) -> int | None:
    """1-based line of ``text`` in the file at ``uri`` (local, ``file:`` or S3; compressed by extension),
    or None where it cannot be found. Error path only: the readers do not know it (Arrow's multithreaded
    reader, Spark)."""
    try:
        fs, path = arrow_fs(uri)
        with fs.open_input_stream(path, compression="detect") as raw:
            for i, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8", errors="replace"), 1):
                if line.rstrip("\r\n") == text:
                    return i
    except (OSError, ValueError):  # a filesystem pyarrow cannot open: the message goes without a line
        pass
    return None


def _bad_row(uri: str, line: int | None, columns: Sequence[str], text: str) -> DataFormatError:
    """The one message of a CSV row with the wrong number of fields, whichever reader found it."""
    got = len(next(csv.reader([text]), []))
    where = f"{uri}:{line if line is not None else '?'}"
    return DataFormatError(
        f"{where}: expected {len(columns)} fields, got {got}: {text!r} (columns: {', '.join(columns)})"
    )


def _read_headerless_csv(path: str | Path, columns: list[str]) -> pa.Table:
    """Read a headerless CSV as strings; a row with the wrong number of fields is an error naming it."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataFormatError(f"{path}: file holds no rows")
    bad: list[DataFormatError] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        # Keep the first for the message; line numbers from Arrow are 1-based physical lines.
        if not bad:
            line = row.number if row.number is not None else _line_number(str(path), row.text)
            bad.append(_bad_row(str(path), line, columns, row.text))
        return "error"

    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=columns, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in columns},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise (bad[0] if bad else DataFormatError(f"{path}: {exc} (columns: {', '.join(columns)})")) from None
    if table.num_rows == 0:
        raise DataFormatError(f"{path}: file holds no rows")
    return table


def read_pairs_csv(path: str | Path) -> pa.Table:
    """SageMaker's training format: headerless ``entity,ip`` rows -> table (entity, ip) of strings."""
    return _read_headerless_csv(path, list(PAIRS_COLUMNS))


def read_labelled_csv(path: str | Path) -> pa.Table:
    """Labelled evaluation rows ``entity,ip,label[,kind[,user_agent]]`` (label 1 = anomalous, 0 = normal; the
    user agent CSV-quoted, empty when unknown: null)."""
    import pyarrow.compute as pc

    path = Path(path)
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        first = fh.readline()
    n = len(next(csv.reader([first]), []))
    if n not in (3, 4, 5):
        raise DataFormatError(
            f"{path}:1: expected 3 to 5 fields (entity,ip,label[,kind[,user_agent]]), got {n}: {first!r}"
        )
    columns = ["entity", "ip", "label", "kind", "user_agent"][:n]
    table = _read_headerless_csv(path, columns)
    if "user_agent" in columns:
        agents = table["user_agent"]
        table = table.set_column(n - 1, "user_agent", pc.if_else(pc.equal(agents, ""), None, agents))
    try:
        labels = table["label"].cast(pa.int8())
    except pa.ArrowInvalid:
        raise DataFormatError(f"{path}: field 'label' (3rd) must be 0 or 1 on every line") from None
    table = table.set_column(table.schema.get_field_index("label"), "label", labels)
    if "kind" not in table.column_names:
        table = table.append_column("kind", pa.array(["all"] * table.num_rows, pa.string()))
    return table


def read_pairs_spark(spark: SparkSession, path: str) -> DataFrame:
    """SageMaker's headerless ``entity,ip`` CSV (file, directory or glob) as a DataFrame(entity, ip).

    Checked by one pass over the rows first (the module's policy): the first bad row raises
    :class:`DataFormatError` naming its file, line and text.
    """
    from pyspark.sql import functions as F

    schema = ", ".join(f"{c} string" for c in (*PAIRS_COLUMNS, _CORRUPT))
    df = (
        spark.read.schema(schema)
        .options(header="false", mode="PERMISSIVE", columnNameOfCorruptRecord=_CORRUPT)
        .csv(path)
    )
    # Every data column is selected with the corrupt one: Spark refuses a query of that column alone,
    # and with fewer columns its pruned parser would not see a row's extra fields.
    bad = (
        df.where(F.col(_CORRUPT).isNotNull())
        .select(*PAIRS_COLUMNS, F.col("_metadata.file_path").alias("file"), _CORRUPT)
        .limit(1)
        .collect()
    )
    if bad:
        row = bad[0]
        raise _bad_row(row["file"], _line_number(row["file"], row[_CORRUPT]), PAIRS_COLUMNS, row[_CORRUPT])
    return df.select(*PAIRS_COLUMNS)


def write_pairs_csv_spark(df: DataFrame, path: str, single_file: bool = True) -> None:
    """Write ``entity,ip`` rows as headerless CSV (SageMaker's training format), atomically.

    Spark writes to a hidden sibling folder first; then either its single part file is renamed to
    ``path`` (``single_file``: one task writes it, fine for training sets of millions of rows) or the
    whole folder is swapped in as ``path`` (a directory of ``part-*.csv`` files). Readers never see a
    partial file; with the folder swap there is a moment where ``path`` does not exist.
    """
    import uuid

    spark = df.sparkSession
    hadoop_fs = jvm(spark).org.apache.hadoop.fs
    fs, final = hadoop_path(spark, path)
    tmp = hadoop_fs.Path(final.getParent(), f".{final.getName()}.tmp-{uuid.uuid4().hex[:8]}")
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
            old = hadoop_fs.Path(final.getParent(), f".{final.getName()}.old-{uuid.uuid4().hex[:8]}")
            had_old = fs.exists(final) and fs.rename(final, old)
            if not fs.rename(tmp, final):
                raise OSError(f"could not rename {tmp} to {final}")
            if had_old:
                fs.delete(old, True)
    finally:
        if fs.exists(tmp):
            fs.delete(tmp, True)


def read_pairs_csv_spark(spark: SparkSession, path: str, day: str) -> DataFrame:
    """SageMaker batch-transform input: headerless ``entity,ip`` CSV (:func:`read_pairs_spark`), labelled
    with partition ``day`` and no timestamp."""
    from pyspark.sql import functions as F

    df = read_pairs_spark(spark, path)
    return df.select(*PAIRS_COLUMNS, F.lit(None).cast("timestamp").alias("ts"), F.lit(day).alias("dt"))


def _looks_like_csv(path: str) -> bool:
    """A ``.csv``/``.txt`` name, or a local file or folder that holds no Parquet files."""
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    if name.endswith((".csv", ".csv.gz", ".txt", ".txt.gz")):
        return True
    if not is_local(path) or any(c in path for c in "*?["):
        return False
    p = local_path(path)
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
        raise ConfigError(f"format {fmt!r} must be one of auto, events, csv")
    if fmt == "csv" or (fmt == "auto" and _looks_like_csv(path)):
        if start_date or end_date:
            raise ConfigError(f"{path}: a CSV input has no days to select (dates apply to an events table)")
        return read_pairs_spark(spark, resolve_uri(spark, path))
    return read_events(spark, resolve_uri(spark, path), start_date, end_date).select(*PAIRS_COLUMNS)


def export_pairs_csv(df: DataFrame, path: str, single_file: bool = True, ipv4_only: bool = True) -> None:
    """Write ``entity,ip`` as headerless CSV in SageMaker's training format (atomically).

    SageMaker's IP Insights only accepts IPv4, so IPv6 events are left out unless ``ipv4_only=False``.
    """
    from pyspark.sql import functions as F

    if ipv4_only:
        df = df.where(F.col("ip_version") == 4)
    write_pairs_csv_spark(df.select("entity", "ip"), path, single_file=single_file)
