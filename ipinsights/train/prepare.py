"""Spark side of training: encode (entity, ip) rows and write them as random buckets for the ranks.

Pure transforms take and return DataFrames; writing goes through ``ipinsights.storage``. Entities are
kept as their full 64-bit hash: the embedding row is taken from it where the pairs are read
(:func:`ipinsights.train.spec.read_pairs`), with the one hash-to-row function of ``core.hashing``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from ipinsights.core.entities import EntityStats
from ipinsights.core.hashing import hash_strings
from ipinsights.core.ip import parse_ip

__all__ = ["ENCODED_SCHEMA", "encode_pairs_df", "valid_pairs", "add_buckets", "entity_stats", "count_entities"]

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


def count_entities(encoded_df) -> tuple[EntityStats, int]:
    """(training event count per entity, rows with a null ``ip``) of :func:`encode_pairs_df`'s output, in one
    aggregation on the executors (one row per entity comes back, and one for the unusable rows)."""
    from pyspark.sql import functions as F

    key = F.when(F.col("ip").isNotNull(), F.col("entity_hash")).alias("entity_hash")
    rows = encoded_df.groupBy(key).count().toArrow()
    valid = rows["entity_hash"].is_valid().to_numpy(zero_copy_only=False)
    counts = rows["count"].to_numpy().astype(np.int64)
    hashes = rows["entity_hash"].fill_null(0).to_numpy().view(np.uint64)
    return EntityStats.from_hash_counts(hashes[valid], counts[valid]), int(counts[~valid].sum())


def entity_stats(encoded_df) -> EntityStats:
    """Training event count per entity, aggregated on the executors (one row per entity comes back)."""
    return count_entities(encoded_df)[0]
