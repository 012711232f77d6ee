"""Parquet files read and written by Python tasks, and the training buckets written by Spark."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pyarrow as pa

from ipinsights.core.errors import DataFormatError
from ipinsights.storage.filesystems import arrow_fs

if TYPE_CHECKING:
    import pyarrow.parquet as pq
    from pyspark.sql import DataFrame, SparkSession


def write_buckets(df: DataFrame, path: str) -> None:
    """Write a bucketed training set (``bucket`` column) as ``path/bucket=K/*.parquet``, replacing it."""
    df.write.mode("overwrite").partitionBy("bucket").parquet(path)


def list_buckets(spark: SparkSession, path: str, n_buckets: int) -> list[list[str]]:
    """Files of each bucket (URIs as Spark lists them; works for any Hadoop file system)."""
    files = spark.read.parquet(path).inputFiles()
    out: list[list[str]] = [[] for _ in range(n_buckets)]
    for f in sorted(files):
        part = next((p for p in f.split("/") if p.startswith("bucket=")), None)
        if part is None:
            raise DataFormatError(f"{f}: not inside a bucket=K directory of {path}")
        out[int(part.split("=", 1)[1])].append(f)
    return out


def write_parquet_single(df: DataFrame, path: str) -> list[str]:
    """Write a small DataFrame as Parquet under ``path`` (replacing it) and return its file URIs."""
    df.write.mode("overwrite").parquet(path)
    return sorted(df.sparkSession.read.parquet(path).inputFiles())


def parquet_writer(uri: str, schema: pa.Schema) -> pq.ParquetWriter:
    """An open Parquet file at ``uri`` (through :func:`arrow_fs`): each table written is a row group.

    As the Spark engine's staged files: LZ4, dictionary encoding only for ``source_file`` (whose
    values repeat in long runs; for the rest it cost more CPU than it saved) and the columns that come
    dictionary-encoded (the user agent's: a few thousand long strings repeated over millions of rows).
    """
    import pyarrow.parquet as pq

    fs, path = arrow_fs(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    dictionary = [f.name for f in schema if f.name == "source_file" or pa.types.is_dictionary(f.type)]
    return pq.ParquetWriter(path, schema, filesystem=fs, compression="lz4", use_dictionary=dictionary)


def write_parquet(table: pa.Table, uri: str) -> str:
    """Write ``table`` as one Parquet file at ``uri`` (see :func:`parquet_writer`); returns ``uri``."""
    with parquet_writer(uri, table.schema) as writer:
        writer.write_table(table)
    return uri


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
