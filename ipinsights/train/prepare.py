"""Spark side of training: encode (entity, ip) rows and write them as random buckets for the ranks.

Pure transforms take and return DataFrames; writing goes through ``ipinsights.storage``. Entities are
kept as their full 64-bit hash: the embedding row is taken from it where the pairs are read
(:func:`ipinsights.train.spec.read_pairs`), with the one hash-to-row function of ``core.hashing``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from ipinsights.core.hashing import hash_strings
from ipinsights.core.ip import parse_ip

__all__ = ["ENCODED_SCHEMA", "encode_pairs_df", "valid_pairs", "add_buckets", "write_entity_stats"]

log = logging.getLogger(__name__)

ENCODED_SCHEMA = "entity_hash long, ip long"


def _encoder(hash_seed: int, ipv6: bool, keep_invalid: bool):
    """A mapInArrow function: (entity, ip) batches -> (entity_hash, ip); rows the model cannot use (invalid
    IP, IPv6 without IPv6 levels, no entity) dropped, or kept with a null ip when ``keep_invalid``."""

    def encode(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            ent = batch.column("entity")
            parsed = parse_ip(batch.column("ip"))
            keep = parsed.valid & np.asarray(ent.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            if not ipv6:
                keep &= ~parsed.is_v6
            h = hash_strings(ent, hash_seed).view(np.int64)
            ip = parsed.value.astype(np.int64)
            if keep_invalid:
                arrays = [pa.array(h), pa.array(ip, mask=~keep)]
            else:
                arrays = [pa.array(h[keep]), pa.array(ip[keep])]
            yield pa.RecordBatch.from_arrays(arrays, names=["entity_hash", "ip"])

    return encode


def encode_pairs_df(df, hash_seed: int, ipv6: bool = True, keep_invalid: bool = False):
    """``(entity, ip)`` -> ``(entity_hash, ip)`` with the model's stable hash, on executors.

    ``ip`` becomes the address key (:func:`ipinsights.core.ip.parse_ip`: IPv4 value or IPv6 top half). Rows
    whose IP is not a valid address are left out; ``ipv6=False`` (a model without IPv6 levels) leaves IPv6
    rows out too. ``keep_invalid`` keeps them with a null ``ip`` instead, so that :func:`count_entities`
    counts them in the aggregation it makes anyway (:func:`valid_pairs` then drops them).
    """
    return df.select("entity", "ip").mapInArrow(_encoder(hash_seed, ipv6, keep_invalid), ENCODED_SCHEMA)


def valid_pairs(encoded_df):
    """The rows of :func:`encode_pairs_df` (``keep_invalid=True``) that the model can use."""
    from pyspark.sql import functions as F

    return encoded_df.where(F.col("ip").isNotNull())


def add_buckets(df, n_buckets: int, seed: int):
    """Assign every row to one of ``n_buckets`` uniformly at random (seeded) and group rows by bucket."""
    from pyspark.sql import functions as F

    bucket = F.floor(F.rand(seed) * n_buckets).cast("int")
    return df.withColumn("bucket", bucket).repartition(n_buckets, "bucket")


def write_entity_stats(encoded_df, uri: str) -> tuple[int, int]:
    """Training event count per entity of :func:`encode_pairs_df`'s output (``keep_invalid=True``) as the
    model's ``entities.safetensors`` at ``uri``; returns (entities, rows with a null ``ip``).

    The executors aggregate and sort the counts into Parquet (``<uri>.parts``), which is then streamed into
    the file one row group at a time: nothing per entity comes back to the driver, and it holds one row
    group (the old way collected a row per entity: past a few million entities more than
    ``spark.driver.maxResultSize``).
    """
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    from ipinsights.core.entities import write_entity_file
    from ipinsights.storage.files import atomic_write, delete_uri
    from ipinsights.storage.filesystems import ArrowStore, arrow_fs, resolve_uri

    spark = encoded_df.sparkSession
    h = F.col("entity_hash")
    # One row per entity, and one (null hash) counting the rows without a usable ip. Written in one
    # ordered pass: the null row first, then the hashes in unsigned order (they are unsigned 64-bit,
    # Spark's longs signed: the negative ones last).
    counts = encoded_df.groupBy(F.when(F.col("ip").isNotNull(), h).alias("entity_hash")).count()
    parts = uri + ".parts"
    counts.orderBy(h.isNotNull(), h < 0, h).write.mode("overwrite").parquet(resolve_uri(spark, parts))
    # An ordered write's part files hold consecutive ranges, in the order of their task numbers (names).
    files = sorted(f for f in ArrowStore().list_files(parts) if f.endswith(".parquet"))
    fs = arrow_fs(parts)[0]

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for f in files:
            with fs.open_input_file(arrow_fs(f)[1]) as fh:
                for batch in pq.ParquetFile(fh).iter_batches(columns=["entity_hash", "count"]):
                    yield batch.column(0), batch.column(1).to_numpy()

    n_invalid, n = 0, 0
    for f in files:
        with fs.open_input_file(arrow_fs(f)[1]) as fh:
            n += pq.ParquetFile(fh).metadata.num_rows
    stream = batches()
    first = next(stream, None)
    chunks: list[tuple[Any, np.ndarray]] = [] if first is None else [first]
    if first is not None and len(first[0]) and not first[0][0].is_valid:  # the null row leads, if there is one
        n_invalid, n = int(first[1][0]), n - 1
        chunks = [(first[0][1:], first[1][1:])]
    with atomic_write(uri, "wb") as out:
        write_entity_file(out, n, ((h.to_numpy(zero_copy_only=False), c) for h, c in itertools.chain(chunks, stream)))
    delete_uri(parts)
    return n, n_invalid
