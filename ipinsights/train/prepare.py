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

__all__ = ["ENCODED_SCHEMA", "encode_pairs_df", "add_buckets", "entity_stats"]

log = logging.getLogger(__name__)

ENCODED_SCHEMA = "entity_hash long, ip long"


def _encoder(hash_seed: int, ipv6: bool):
    """A mapInArrow function: (entity, ip) batches -> (entity_hash, ip); invalid IPs dropped."""

    def encode(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            ent = batch.column("entity")
            parsed = parse_ip(batch.column("ip"))
            keep = parsed.valid & np.asarray(ent.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            if not ipv6:
                keep &= ~parsed.is_v6
            h = hash_strings(ent, hash_seed)
            yield pa.RecordBatch.from_arrays(
                [pa.array(h[keep].view(np.int64)), pa.array(parsed.value[keep].astype(np.int64))],
                names=["entity_hash", "ip"],
            )

    return encode


def encode_pairs_df(df, hash_seed: int, ipv6: bool = True):
    """``(entity, ip)`` -> ``(entity_hash, ip)`` with the model's stable hash, on executors.

    ``ip`` becomes the address key (:func:`ipinsights.core.ip.parse_ip`: IPv4 value or IPv6 top half). Rows
    whose IP is not a valid address are left out here; the ingest job already counted and quarantined
    malformed lines; ``ipv6=False`` (a model without IPv6 levels) leaves IPv6 rows out too.
    """
    return df.select("entity", "ip").mapInArrow(_encoder(hash_seed, ipv6), ENCODED_SCHEMA)


def add_buckets(df, n_buckets: int, seed: int):
    """Assign every row to one of ``n_buckets`` uniformly at random (seeded) and group rows by bucket."""
    from pyspark.sql import functions as F

    bucket = F.floor(F.rand(seed) * n_buckets).cast("int")
    return df.withColumn("bucket", bucket).repartition(n_buckets, "bucket")


def entity_stats(encoded_df) -> EntityStats:
    """Training event count per entity, aggregated on the executors (one row per entity comes back)."""
    rows = encoded_df.groupBy("entity_hash").count().toArrow()
    return EntityStats.from_hash_counts(
        rows["entity_hash"].to_numpy().view(np.uint64), rows["count"].to_numpy().astype(np.int64)
    )
