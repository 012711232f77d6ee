"""Entity profiles on Spark: built from the training days (scored on the executors and aggregated per entity
there), and streamed with the events to the scoring workers (each batch brings its own entities' rows).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ipinsights.core.ip import key_prefix
from ipinsights.score.clients import DEVICE_COLUMNS, event_devices
from ipinsights.score.features import event_days
from ipinsights.score.profile_rows import LISTS, ROW_SCHEMA, SCALARS, new_rows_uri, save_header
from ipinsights.score.profile_stream import JOINED, PROFILE, pack_rows
from ipinsights.score.profiles import (
    NETWORK_V4,
    NETWORK_V6,
    QUANTILES,
    SUBNET_V4,
    SUBNET_V6,
    PopulationPrior,
    ProfileHeader,
)

if TYPE_CHECKING:
    # Imported where used: the Python tasks that read the profile rows (_packed_rows) import this module
    # and need no model.
    from pyspark.sql import Column, DataFrame, SparkSession

    from ipinsights.score.scorer import Scorer

log = logging.getLogger(__name__)


def _history_batch(scorer: Scorer, batch: pa.RecordBatch) -> pa.RecordBatch:
    """(entity, ip[, ts][, the user-agent columns]) -> (entity, entity_hash, key, its /24|/48 and /16|/32, asn,
    country, day, device, agent, anomaly) of the rows with a score (asn and country -1 outside the table or
    without one; day -1 without a timestamp; device and agent 0 without a user agent)."""
    ent, ip = batch.column("entity"), batch.column("ip")
    parsed = scorer.parse(ip)
    dp = scorer.dot_product(ent, ip)
    keep = parsed.valid & np.isfinite(dp)
    keys = parsed.value[keep]
    table = scorer.asn_table
    row = table.find(keys) if table is not None else np.full(keys.size, -1, np.int64)
    found = np.maximum(row, 0)
    asn = np.where(row >= 0, table.asn[found], -1) if table is not None else row
    country = np.where(row >= 0, table.country[found], -1) if table is not None else row
    day = event_days(batch.column("ts") if "ts" in batch.schema.names else None, batch.num_rows)[keep]
    clients = event_devices(batch)
    return pa.RecordBatch.from_arrays(
        [
            ent.filter(pa.array(keep)),
            pa.array(scorer.entity_hashes(ent)[keep].view(np.int64)),
            pa.array(keys),
            pa.array(key_prefix(keys, SUBNET_V4, SUBNET_V6)),
            pa.array(key_prefix(keys, NETWORK_V4, NETWORK_V6)),
            pa.array(asn.astype(np.int64)),
            pa.array(country.astype(np.int64)),
            pa.array(np.where(np.isfinite(day), day, -1).astype(np.int64)),
            pa.array(clients.device[keep]),
            pa.array(clients.agent[keep]),
            pa.array(-dp[keep].astype(np.float64)),
        ],
        names=["entity", "entity_hash", "key", "net", "wide", "asn", "country", "day", "device", "agent", "anomaly"],
    )


def write_parts(folder: str, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body: one task's rows as one Parquet file of ``schema`` under ``folder`` (random name: a
    retried attempt never overwrites the one before it; the driver keeps only the reported files, see
    :func:`written_parts`); yields (file, rows)."""
    from ipinsights.storage.parquet import parquet_writer

    writer, uri, n = None, f"{folder}/part-{uuid.uuid4().hex}.parquet", 0
    try:
        for batch in batches:
            table = pa.Table.from_batches([batch]).cast(schema)  # Spark's list fields are named "element"
            writer = writer or parquet_writer(uri, schema)
            writer.write_table(table)
            n += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    if writer is not None:
        yield pa.RecordBatch.from_arrays([pa.array([uri]), pa.array([n], pa.int64())], names=["file", "n"])


def written_parts(df: DataFrame, folder: str, schema: pa.Schema) -> tuple[list[str], int]:
    """Write ``df``'s rows as Parquet files of ``schema`` under ``folder`` from the Python tasks (:func:`write_parts`,
    with ``pyarrow.fs``: a model on S3 needs no Hadoop connector for the files beside it); the files every task
    reported, sorted (the leftovers of failed attempts removed), and the rows in them."""
    from ipinsights.storage.filesystems import ArrowStore
    from ipinsights.storage.publish import drop_unreported

    written = df.mapInArrow(partial(write_parts, folder, schema), "file string, n long").collect()  # a row per task
    drop_unreported(ArrowStore(), {r["file"] for r in written})
    return sorted(r["file"] for r in written), sum(r["n"] for r in written)


def build_profiles(
    history: DataFrame,
    model_path: str,
    path: str,
    asn_path: str | None = None,
    max_networks: int = 16,
    accuracy: int = 10_000,
    fence: Callable[[], None] | None = None,
) -> ProfileHeader:
    """Profiles of every entity of ``history`` (the training days' ``entity``, ``ip`` and, when it has them,
    ``ts`` and the user-agent columns), saved at ``path``.

    Scores the history with the model on the executors, aggregates per entity there and writes the rows
    table from there too (:mod:`ipinsights.score.profile_rows`); the driver gets the population counts only
    (one row per network and per AS, bounded by the networks, not the entities or events) and writes the
    header.
    """
    from ipinsights.score.spark_arrow import map_in_arrow
    from ipinsights.score.worker import ScorerSource
    from ipinsights.storage.modelfile import model_fingerprint

    schema = (
        "entity string, entity_hash long, key long, net long, wide long, asn long, country long, day long, "
        "device long, agent long, anomaly double"
    )
    source = ScorerSource(model_path, asn_table=asn_path)
    columns = ["entity", "ip", *(c for c in ("ts", *DEVICE_COLUMNS) if c in history.columns)]
    scored = map_in_arrow(history.select(*columns), source, _history_batch, schema).persist()
    try:
        rows = _entity_rows(scored, max_networks, accuracy)
        rows_uri = new_rows_uri(path)
        # Written by the Python tasks with pyarrow, as every file beside a model is: a model on S3 needs no
        # Hadoop connector. Sorted by entity within each file (a reader of one entity skips row groups).
        files, entities = written_parts(rows.sortWithinPartitions("entity"), rows_uri, ROW_SCHEMA)
        population = _population(scored, entities)
    finally:
        scored.unpersist()
    fingerprint = model_fingerprint(model_path)
    if fence is not None:  # the rows are under a new name; the header, written last, is what publishes them
        fence()
    save_header(path, population, fingerprint, rows_uri, files, entities)
    return ProfileHeader(path, population, fingerprint, rows_uri, tuple(files), entities)  # as written, not reread


def _entity_rows(scored: DataFrame, max_networks: int, accuracy: int) -> DataFrame:
    """One row per entity of ``scored`` (:func:`_history_batch`'s rows), in :data:`ROW_SCHEMA`'s columns."""
    from pyspark.sql import functions as F

    keys = ["entity", "entity_hash"]
    quant = scored.groupBy(*keys).agg(
        F.percentile_approx("anomaly", [float(q) for q in QUANTILES], accuracy).alias("q"),
        F.count(F.lit(1)).alias("events"),
        F.countDistinct("net").alias("networks"),
    )
    nets = scored.groupBy(*keys, "net").agg(
        F.count(F.lit(1)).alias("n"), F.mode("key").alias("key"), F.max("day").alias("last")
    )
    net_lists = _top(nets, keys, "key", max_networks, ("key", "n", "last"), "nets")
    wides = scored.groupBy(*keys, "wide").agg(F.count(F.lit(1)).alias("n"))
    wide_lists = _top(wides, keys, "wide", max_networks, ("wide", "n"), "wides")
    asns = (
        scored.where(F.col("asn") >= 0)
        .groupBy(*keys, "asn")
        .agg(F.count(F.lit(1)).alias("n"), F.max("day").alias("last"))
        .groupBy(*keys)
        .agg(F.sort_array(F.collect_list(F.struct("asn", "n", "last"))).alias("as_list"))
    )
    devices, agents = _client_lists(scored, keys, max_networks)
    countries = (
        scored.where(F.col("country") >= 0)
        .groupBy(*keys, "country")
        .agg(F.count(F.lit(1)).alias("n"))
        .groupBy(*keys)
        .agg(F.sort_array(F.collect_list(F.struct("country", "n"))).alias("country_list"))
    )

    def field(name: str, column: str) -> Column:
        return F.transform(name, lambda x: x[column])

    rows = (
        quant.join(net_lists, keys)
        .join(wide_lists, keys)
        .join(asns, keys, "left")
        .join(countries, keys, "left")
        .join(devices, keys, "left")
        .join(agents, keys, "left")
        .select(
            *keys,
            F.array_sort(F.transform("q", lambda x: x.cast("float"))).alias("q"),
            field("nets", "key").alias("net_keys"),
            field("nets", "n").alias("net_counts"),
            field("as_list", "asn").alias("asns"),
            field("nets", "last").alias("net_last"),
            field("as_list", "n").alias("asn_counts"),
            field("as_list", "last").alias("asn_last"),
            field("wides", "wide").alias("wide_keys"),
            field("wides", "n").alias("wide_counts"),
            field("country_list", "country").alias("countries"),
            field("country_list", "n").alias("country_counts"),
            field("device_list", "device").alias("devices"),
            field("device_list", "n").alias("device_counts"),
            field("device_list", "last").alias("device_last"),
            field("agent_list", "agent").alias("agents"),
            field("agent_list", "n").alias("agent_counts"),
            "events",
            "networks",
        )
    )
    assert rows.columns == ROW_SCHEMA.names
    return rows


def _client_lists(scored: DataFrame, keys: list[str], top: int) -> tuple[DataFrame, DataFrame]:
    """Per entity, its ``top`` most used devices (with logins and last day) and user-agent strings (with
    logins), of the rows with a user agent."""
    from pyspark.sql import functions as F

    devices = _top(
        scored.where(F.col("device") != 0)
        .groupBy(*keys, "device")
        .agg(F.count(F.lit(1)).alias("n"), F.max("day").alias("last")),
        keys,
        "device",
        top,
        ("device", "n", "last"),
        "device_list",
    )
    agents = _top(
        scored.where(F.col("agent") != 0).groupBy(*keys, "agent").agg(F.count(F.lit(1)).alias("n")),
        keys,
        "agent",
        top,
        ("agent", "n"),
        "agent_list",
    )
    return devices, agents


def _top(counted: DataFrame, keys: list[str], tie: str, top: int, fields: tuple[str, ...], name: str) -> DataFrame:
    """Per entity, the ``top`` most counted (``n``) rows of ``counted`` (ties: smallest ``tie`` first) as a list
    ``name`` of structs of ``fields``, most counted first."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ranked = counted.withColumn(
        "r", F.row_number().over(Window.partitionBy(*keys).orderBy(F.desc("n"), F.asc(tie)))
    ).where(F.col("r") <= top)
    return ranked.groupBy(*keys).agg(F.sort_array(F.collect_list(F.struct("r", *fields))).alias(name))


def _population(scored: DataFrame, entities: int) -> PopulationPrior:
    """Events and distinct entities per /24 (/48) and /16 (/32), distinct entities per AS, device and
    user-agent string: one row per network, AS, device and string comes back to the driver (bounded by
    those, not by the events or the entities)."""
    from pyspark.sql import functions as F

    def per(column: str, where: Column | None = None) -> pa.Table:
        rows = scored if where is None else scored.where(where)
        counted = rows.groupBy(F.col(column).alias("id")).agg(
            F.count(F.lit(1)).alias("events"), F.countDistinct("entity_hash").alias("entities")
        )
        return to_arrow(counted).sort_by("id")  # sorted here: a distributed sort costs another stage

    def col(t: pa.Table, name: str) -> np.ndarray:
        return t[name].to_numpy().astype(np.int64)

    sub, wide, asn = per("net"), per("wide"), per("asn", F.col("asn") >= 0)
    device, agent = per("device", F.col("device") != 0), per("agent", F.col("agent") != 0)
    return PopulationPrior(
        subnets=col(sub, "id"),
        subnet_counts=col(sub, "events"),
        networks=col(wide, "id"),
        network_counts=col(wide, "events"),
        subnet_entities=col(sub, "entities"),
        network_entities=col(wide, "entities"),
        asns=col(asn, "id"),
        asn_entities=col(asn, "entities"),
        devices=col(device, "id"),
        device_entities=col(device, "entities"),
        agents=col(agent, "id"),
        agent_entities=col(agent, "entities"),
        entities=entities,
    )


def to_arrow(df: DataFrame) -> pa.Table:
    """``df``'s rows on the driver as an Arrow table: ``DataFrame.toArrow`` where Spark has it (4.0 and later),
    else (Spark 3.5) its collected rows in the Arrow schema ``toArrow`` gives. Only for small results (every
    row comes back either way): aggregates, such as the per-network counts of :func:`build_profiles`."""
    if hasattr(df, "toArrow"):
        return df.toArrow()
    from pyspark.sql.pandas.types import to_arrow_schema

    return pa.Table.from_pylist([row.asDict() for row in df.collect()], schema=to_arrow_schema(df.schema))


def with_profile_rows(df: DataFrame, files: tuple[str, ...]) -> DataFrame:
    """``df`` (Spark, with ``entity``) and its entities' profile rows in one stream, for a scoring worker to
    read each entity's row once (:mod:`ipinsights.score.profile_stream`).

    The rows table's rows come packed in :data:`PROFILE`, ``df``'s rows with it null; partitioned by the
    entity and sorted by it, each entity's profile row just before its events. A join would repeat an
    entity's lists (most of the bytes) on every one of its events, through the shuffle and to Python: this
    way they cross once. Every profile row travels, used or not: for a small ``df``, :func:`join_profile_rows`.
    """
    from pyspark.sql import functions as F

    rows = _profile_rows(df.sparkSession, files)
    both = df.withColumn(PROFILE, F.lit(None).cast("binary")).unionByName(rows, allowMissingColumns=True)
    # Sorted by the entity's hash first: names share long prefixes ("user0001..."), which leave Spark's
    # sort comparing whole strings; a 64-bit key settles almost every comparison in its prefix.
    order = [F.xxhash64("entity"), F.col("entity"), F.col(PROFILE).isNull()]
    return both.repartition("entity").sortWithinPartitions(*order)


def join_profile_rows(df: DataFrame, files: tuple[str, ...]) -> DataFrame:
    """``df`` (Spark, with ``entity``) with its entity's profile row, packed, on each row (:data:`JOINED`;
    null without one): a left join, for a small ``df`` (flagged rows, the fusion's sample), where
    repeating the lists costs less than streaming every entity's row (:func:`with_profile_rows`)."""
    rows = _profile_rows(df.sparkSession, files).withColumnRenamed(PROFILE, JOINED)
    return df.join(rows, on="entity", how="left").select(*df.columns, JOINED)


def _profile_rows(spark: SparkSession, files: tuple[str, ...]) -> DataFrame:
    """The rows table's rows (its Parquet ``files``, read by Python tasks, one per file): ``entity`` and the
    row packed in :data:`PROFILE`."""
    tasks = spark.sparkContext.parallelize([(f,) for f in files], max(1, len(files)))  # a task per file
    listing = spark.createDataFrame(tasks, "file string")
    return listing.mapInArrow(_packed_rows, f"entity string, {PROFILE} binary")


def _packed_rows(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body of :func:`_profile_rows`: the rows of each listed Parquet file, a row group
    at a time, packed (:func:`~ipinsights.score.profile_stream.pack_rows`)."""
    import pyarrow.parquet as pq

    from ipinsights.storage.filesystems import arrow_fs

    for batch in batches:
        for uri in batch.column(0).to_pylist():
            fs, path = arrow_fs(uri)
            with fs.open_input_file(path) as fh:
                for part in pq.ParquetFile(fh).iter_batches(batch_size=8192, columns=["entity", *LISTS, *SCALARS]):
                    yield pa.RecordBatch.from_arrays(
                        [part.column("entity"), pack_rows(part)], names=["entity", PROFILE]
                    )
