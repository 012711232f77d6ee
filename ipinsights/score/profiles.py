"""Entity profiles: what each training entity's normal looks like, for percentiles and explanations.

For every entity of the training days, a profile holds:

* the quantiles of its own anomaly scores over its training events (``QUANTILES``: 0, 5, ..., 100 %),
  so a new score can be placed as a per-entity percentile ("more unusual than 97 % of this user's
  normal logins") and the entity's typical score range can be shown next to a flagged case;
* its known networks: the ``max_networks`` most used /24s (IPv4) or /48s (IPv6), each with a
  representative address key (the most used address in it) and the event count, which the
  explanations compare a flagged address with, by prefix and by embedding similarity;
* the ASNs it used, when an ASN table was given (:class:`ipinsights.asn.AsnTable`).

And for the population (:class:`PopulationPrior`): how many training events every /24 (IPv6 /48) and
/16 (/32) saw, across all entities. That is the prior that judges entities in their learning period:
an address in a network many people log in from is typical, one in a network nobody used is not.

Stored beside the model in two parts, each sized by what it describes:

* ``<model_dir>.profile.safetensors``, the **header**: the population counts (bounded by the number of
  networks, not of entities), the model's fingerprint (like a calibration, a profile is a property of
  (model, traffic) and is refused for any other model) and the name of its rows table;
* ``<model_dir>.profile.rows-<build>/``, the **rows**: Parquet files of one row per entity (``entity``,
  ``entity_hash``, ``q``, ``net_keys``, ``net_counts``, ``asns``; about ``8 * (4 + 21/2 + 2 *
  max_networks)`` bytes each), written by the executors that built it, named in the header.

Both are read and written by Python (``pyarrow.fs``), like every file beside a model: a model on S3 needs
no Hadoop S3 connector for them.

The Spark jobs never load the rows whole: each scoring batch is joined with its own entities' rows
(:func:`joined_profiles`), so a scoring worker holds the header and one batch. In-process scoring (the
CLI, the endpoint) loads them all (:meth:`EntityProfiles.load`). The header is written last and names
its rows, so a reader sees a whole profile or the previous one, never half of one.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ipinsights.core.entities import find_sorted
from ipinsights.storage.files import atomic_write, delete_uri, is_file, read_bytes

log = logging.getLogger(__name__)


FORMAT = "ipinsights-profile"
VERSION = "2"  # 1: one safetensors file with every entity's arrays (refused: rebuilt by the scoring job)


#: Quantile levels of each entity's training anomaly scores.
QUANTILES = np.linspace(0.0, 1.0, 21)


SUBNET_V4, SUBNET_V6 = 24, 48  # the "known network" granularity: a /24, or an IPv6 site (/48)


NETWORK_V4, NETWORK_V6 = 16, 32  # the coarser one: a /16, or an IPv6 ISP allocation (/32)


#: The rows table's columns, and their types (lists of one entity's values).
ROW_SCHEMA = pa.schema(
    [
        ("entity", pa.string()),
        ("entity_hash", pa.int64()),
        ("q", pa.list_(pa.float32())),  # its QUANTILES of its training anomaly scores, ascending
        ("net_keys", pa.list_(pa.int64())),  # a representative address key per known network, most used first
        ("net_counts", pa.list_(pa.int64())),  # training events in that network
        ("asns", pa.list_(pa.int64())),  # ASNs it used (empty or null without an ASN table)
    ]
)


#: Names of the profile columns a scoring batch carries after :func:`join_profile_rows` (null: no profile).
JOINED = {name: f"_profile_{name}" for name in ("q", "net_keys", "net_counts", "asns")}


def _counts_of(ids: np.ndarray, counts: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``counts`` of each ``wanted`` id in the sorted ``ids`` (0 where absent)."""
    if not ids.size:
        return np.zeros(len(wanted))
    pos, found = find_sorted(ids, wanted)
    return np.where(found, counts[pos], 0).astype(np.float64)


class ProfileError(ValueError):
    """A profile file is missing, malformed, or belongs to another model."""


@dataclass(frozen=True)
class PopulationPrior:
    """Training events per /24 (/48) and per /16 (/32) network ids (``ip.key_prefix``), each sorted."""

    subnets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    subnet_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    networks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    network_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def prior_anomaly(self, keys: np.ndarray) -> np.ndarray:
        """Population-prior anomaly score of address keys: ``-log`` of the smoothed share of training events
        in the address's /24 (/48), backed off to a tenth of its /16 (/32) share for a subnet nobody used.

        Higher = rarer for everyone. Units: nats; 0 would be "all traffic comes from here".
        """
        from ipinsights.core.ip import key_prefix

        # Looked up once per distinct address, in sorted order: traffic repeats addresses, and sorted
        # probes walk the sorted population arrays in order (several times faster than random ones).
        uniq, inv = np.unique(np.asarray(keys, dtype=np.int64), return_inverse=True)
        sub = _counts_of(self.subnets, self.subnet_counts, key_prefix(uniq, SUBNET_V4, SUBNET_V6))
        net = _counts_of(self.networks, self.network_counts, key_prefix(uniq, NETWORK_V4, NETWORK_V6))
        return (-np.log((sub + 0.1 * net + 1.0) / self._total))[inv]

    @functools.cached_property
    def _total(self) -> float:
        return float(self.subnet_counts.sum()) + 1.0

    def tensors(self) -> dict[str, np.ndarray]:
        return {
            "pop_subnets": self.subnets.astype(np.int64),
            "pop_subnet_counts": self.subnet_counts.astype(np.int64),
            "pop_networks": self.networks.astype(np.int64),
            "pop_network_counts": self.network_counts.astype(np.int64),
        }


@dataclass(frozen=True)
class ProfileHeader:
    """What a profile's header file says: its population prior, its model, and where its rows are."""

    path: str
    population: PopulationPrior
    fingerprint: str
    rows: str  # the rows table's URI (a folder)
    files: tuple[str, ...]  # its Parquet files' URIs
    entities: int

    @classmethod
    def load(cls, path: str | Path, model_dir: str | Path | None = None) -> ProfileHeader:
        """Read a profile header; with ``model_dir``, refuse it unless it was made for that model."""
        from safetensors import SafetensorError
        from safetensors.numpy import load

        from ipinsights.storage.modelfile import model_fingerprint

        if not is_file(path):
            raise ProfileError(f"{path}: no profile file")
        try:
            data = read_bytes(path)
            t = load(data)
            meta = _metadata(data)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ProfileError(f"{path}: not a readable profile file ({exc})") from None
        if (
            meta.get("format") != FORMAT
            or meta.get("version") != VERSION
            or json.loads(meta.get("quantiles", "[]")) != QUANTILES.tolist()
        ):
            raise ProfileError(f"{path}: not an ipinsights profile of this version (rebuild it)")
        if model_dir is not None and meta.get("model_fingerprint") != model_fingerprint(model_dir):
            raise ProfileError(f"{path}: made for another model than {model_dir} (rebuild it)")
        rows = _sibling(str(path), meta.get("rows", ""))
        files = tuple(f"{rows}/{name}" for name in json.loads(meta.get("rows_files", "[]")))
        if not meta.get("rows") or not all(is_file(f) for f in files[:1]):
            raise ProfileError(f"{path}: its rows table {rows} is missing (rebuild it)")
        try:
            population = PopulationPrior(
                t["pop_subnets"], t["pop_subnet_counts"], t["pop_networks"], t["pop_network_counts"]
            )
        except KeyError as exc:
            raise ProfileError(f"{path}: missing tensor {exc}") from None
        fingerprint = meta.get("model_fingerprint", "")
        return cls(str(path), population, fingerprint, rows, files, int(meta.get("entities", 0)))


@dataclass(frozen=True)
class EntityProfiles:
    """Per-entity score quantiles and known networks, indexed by the entity's 64-bit stable hash.

    Loaded whole for in-process scoring, or built per scoring batch from the rows joined onto it
    (:func:`joined_profiles`: then row ``i`` is the batch's ``i``-th entity with a profile, not sorted).
    """

    hashes: np.ndarray  # uint64 (n,), sorted (by row order for a joined batch)
    score_quantiles: np.ndarray  # float32 (n, len(QUANTILES)): anomaly scores of the training events
    net_offsets: np.ndarray  # int64 (n + 1,): entity i's networks are [net_offsets[i], net_offsets[i+1])
    net_keys: np.ndarray  # int64: a representative address key of each known network, most used first
    net_counts: np.ndarray  # int64: training events in that network
    asn_offsets: np.ndarray  # int64 (n + 1,)
    asns: np.ndarray  # int64: ASNs the entity used (empty without an ASN table)
    fingerprint: str
    population: PopulationPrior = field(default_factory=PopulationPrior)
    entities: np.ndarray | None = None  # object (n,): the entity strings, when known (needed to save)

    def __len__(self) -> int:
        return int(self.hashes.size)

    def index_of(self, hashes: np.ndarray) -> np.ndarray:
        """Row of each entity hash, -1 where the entity has no profile."""
        pos, found = find_sorted(self.hashes, np.asarray(hashes, dtype=np.uint64))
        return np.where(found, pos, -1).astype(np.int64)

    def percentile(self, rows: np.ndarray, anomaly: np.ndarray) -> np.ndarray:
        """Per-entity percentile (0-100) of each anomaly score among its entity's training scores; NaN if unknown.

        Linear interpolation in the quantile table: 100 means more unusual than every training event
        of that entity, 50 as unusual as its median login.
        """
        rows = np.asarray(rows)
        a = np.asarray(anomaly, dtype=np.float64)
        out = np.full(a.size, np.nan)
        ok = (rows >= 0) & np.isfinite(a)
        if not ok.any():
            return out
        q = self.score_quantiles[rows[ok]]  # (m, Q), non-decreasing per row; compared as float64, not copied
        x = a[ok]
        k = (q <= x[:, None]).sum(axis=1)  # how many quantile points lie at or below the score
        lo = np.clip(k - 1, 0, q.shape[1] - 1)
        hi = np.clip(k, 0, q.shape[1] - 1)
        m = np.arange(x.size)
        ql, qh = q[m, lo].astype(np.float64), q[m, hi].astype(np.float64)
        frac = np.where(qh > ql, (x - ql) / np.where(qh > ql, qh - ql, 1.0), 0.0)
        level = QUANTILES[lo] + np.clip(frac, 0.0, 1.0) * (QUANTILES[hi] - QUANTILES[lo])
        out[ok] = np.where(k == 0, 0.0, np.where(k >= q.shape[1], 1.0, level)) * 100.0
        return out

    def typical_range(self, rows: np.ndarray, low: float = 0.05, high: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """The entity's typical anomaly-score range (``low``..``high`` quantiles); NaN where unknown."""
        rows = np.asarray(rows)
        i, j = int(np.argmin(np.abs(QUANTILES - low))), int(np.argmin(np.abs(QUANTILES - high)))
        if not len(self):
            return np.full(rows.size, np.nan), np.full(rows.size, np.nan)
        lo = np.where(rows >= 0, self.score_quantiles[np.maximum(rows, 0), i], np.nan)
        hi = np.where(rows >= 0, self.score_quantiles[np.maximum(rows, 0), j], np.nan)
        return lo, hi

    def networks(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(representative keys, counts) of entity ``row``'s known networks, most used first."""
        s, e = int(self.net_offsets[row]), int(self.net_offsets[row + 1])
        return self.net_keys[s:e], self.net_counts[s:e]

    def entity_asns(self, row: int) -> np.ndarray:
        s, e = int(self.asn_offsets[row]), int(self.asn_offsets[row + 1])
        return self.asns[s:e]

    # ---- storage --------------------------------------------------------------------------------
    def rows_table(self) -> pa.Table:
        """The profiles as rows of :data:`ROW_SCHEMA` (needs ``entities``)."""
        if self.entities is None:
            raise ValueError("profiles without their entity strings cannot be stored (the rows are joined on them)")

        def lists(offsets: np.ndarray, values: np.ndarray, kind: pa.DataType) -> pa.Array:
            return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, kind))

        n = len(self)
        q_offsets = np.arange(n + 1, dtype=np.int64) * QUANTILES.size
        return pa.Table.from_arrays(
            [
                pa.array(self.entities, pa.string()),
                pa.array(self.hashes.view(np.int64)),
                lists(q_offsets, self.score_quantiles.astype(np.float32).ravel(), pa.float32()),
                lists(self.net_offsets, self.net_keys.astype(np.int64), pa.int64()),
                lists(self.net_offsets, self.net_counts.astype(np.int64), pa.int64()),
                lists(self.asn_offsets, self.asns.astype(np.int64), pa.int64()),
            ],
            schema=ROW_SCHEMA,
        )

    def save(self, path: str | Path) -> str | Path:
        """Write the rows table, then the header that names it (:func:`save_header`); a path or URI."""
        from ipinsights.storage.parquet import write_parquet

        rows = new_rows_uri(path)
        part = write_parquet(self.rows_table(), f"{rows}/part-00000.parquet")
        save_header(path, self.population, self.fingerprint, rows, [part], len(self))
        return path

    @classmethod
    def load(cls, path: str | Path, model_dir: str | Path | None = None) -> EntityProfiles:
        """Read a whole profile (header and every row); with ``model_dir``, refuse it unless it is that model's."""
        header = ProfileHeader.load(path, model_dir)
        try:
            table = _read_rows(header.files, [n for n in ROW_SCHEMA.names if n != "entity"])
        except (OSError, pa.ArrowException) as exc:
            raise ProfileError(f"{path}: its rows table {header.rows} is not readable ({exc})") from None
        return rows_to_profiles(table, header.fingerprint, header.population)


def new_rows_uri(path: str | Path) -> str:
    """A fresh rows-table URI beside the header ``path``: a build never writes into another's rows."""
    stem = str(path).removesuffix(".safetensors")
    return f"{stem}.rows-{uuid.uuid4().hex[:12]}"


def save_header(path: str | Path, population: PopulationPrior, fingerprint: str, rows: str, files: list[str],
                entities: int) -> None:  # fmt: skip
    """Write the header atomically (safetensors: no pickle) once the rows table ``rows`` (its Parquet
    ``files``) is complete, then remove the rows tables of the builds it replaces (beside it, with its name)."""
    from safetensors.numpy import save

    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model_fingerprint": fingerprint,
        "quantiles": json.dumps(QUANTILES.tolist()),
        "rows": rows.rstrip("/").rsplit("/", 1)[-1],
        "rows_files": json.dumps(sorted(f.rsplit("/", 1)[-1] for f in files)),
        "entities": str(int(entities)),
    }
    with atomic_write(path, mode="wb") as fh:
        fh.write(save(population.tensors(), metadata=meta))
    for old in _old_rows(str(path), rows):
        delete_uri(old)


def _old_rows(path: str, keep: str) -> list[str]:
    """The rows tables beside ``path`` of its earlier builds (every ``<stem>.rows-*`` but ``keep``)."""
    import pyarrow.fs as pafs

    from ipinsights.storage.filesystems import arrow_fs, arrow_uri

    stem = path.removesuffix(".safetensors")
    parent, name = stem.rsplit("/", 1) if "/" in stem else (".", stem)
    fs, folder = arrow_fs(parent)
    prefix, keep_name = f"{name}.rows-", keep.rstrip("/").rsplit("/", 1)[-1]
    found = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return [
        arrow_uri(parent, f.path) if "://" in parent else f.path
        for f in found
        if f.base_name.startswith(prefix) and f.base_name != keep_name
    ]


def _sibling(path: str, name: str) -> str:
    """``name`` in the folder of ``path`` (same form: local path or URI)."""
    return f"{path.rsplit('/', 1)[0]}/{name}" if "/" in path else name


def _metadata(data: bytes) -> dict[str, str]:
    """A safetensors file's ``__metadata__`` (its JSON header says it; safetensors.numpy.load drops it)."""
    n = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8 : 8 + n]).get("__metadata__") or {})


def _read_rows(files: tuple[str, ...], columns: list[str]) -> pa.Table:
    """``columns`` of every row of a rows table (its Parquet ``files``)."""
    import pyarrow.dataset as ds

    from ipinsights.storage.filesystems import arrow_fs

    if not files:
        return ROW_SCHEMA.empty_table().select(columns)
    fs = arrow_fs(files[0])[0]
    paths = [arrow_fs(f)[1] for f in files]
    return ds.dataset(paths, filesystem=fs, format="parquet", schema=ROW_SCHEMA).to_table(columns=columns)


def _joined_batches(batches: Any) -> Any:
    """``mapInArrow`` body of :func:`join_profile_rows`: the rows of each listed Parquet file, a row group at
    a time, under the joined columns' names."""
    import pyarrow.parquet as pq

    from ipinsights.storage.filesystems import arrow_fs

    names = ["entity", *JOINED.values()]
    for batch in batches:
        for uri in batch.column(0).to_pylist():
            fs, path = arrow_fs(uri)
            with fs.open_input_file(path) as fh:
                for part in pq.ParquetFile(fh).iter_batches(batch_size=8192, columns=["entity", *JOINED]):
                    yield pa.RecordBatch.from_arrays(part.columns, names=names)


def _list_parts(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (n + 1,), flat int64 values) of a list column; a null list counts as empty."""
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), flat


def _profiles_of(columns: dict[str, Any], hashes: np.ndarray, fingerprint: str, population: PopulationPrior,
                 entities: np.ndarray | None = None) -> EntityProfiles:  # fmt: skip
    """EntityProfiles of rows whose list columns ``q``, ``net_keys``, ``net_counts``, ``asns`` are given."""
    n = hashes.size
    _, q = _list_parts(columns["q"])
    net_offsets, net_keys = _list_parts(columns["net_keys"])
    _, net_counts = _list_parts(columns["net_counts"])
    asn_offsets, asns = _list_parts(columns["asns"])
    return EntityProfiles(
        hashes=hashes,
        score_quantiles=np.asarray(q, np.float32).reshape(n, QUANTILES.size),
        net_offsets=net_offsets,
        net_keys=net_keys.astype(np.int64),
        net_counts=net_counts.astype(np.int64),
        asn_offsets=asn_offsets,
        asns=asns.astype(np.int64),
        fingerprint=fingerprint,
        population=population,
        entities=entities,
    )


def rows_to_profiles(table: pa.Table, fingerprint: str, population: PopulationPrior) -> EntityProfiles:
    """EntityProfiles of a rows table (:data:`ROW_SCHEMA`; ``entity`` may be left out), sorted by entity hash.

    Looked up by hash, they need no entity strings: those are kept only when the table has them.
    """
    h = table["entity_hash"].to_numpy().view(np.uint64)
    order = np.argsort(h, kind="stable")
    table = table.take(pa.array(order))
    cols = {name: table[name] for name in ("q", "net_keys", "net_counts", "asns")}
    names = table["entity"].to_numpy(zero_copy_only=False) if "entity" in table.column_names else None
    return _profiles_of(cols, h[order], fingerprint, population, names)


def joined_profiles(batch: pa.RecordBatch, population: PopulationPrior) -> tuple[EntityProfiles, np.ndarray]:
    """The profiles joined onto a scoring batch (:data:`JOINED` columns), and the profile row of each batch
    row (-1: the entity has none). Only this batch's entities are in memory."""
    present = batch.column(JOINED["q"]).is_valid().to_numpy(zero_copy_only=False)
    idx = np.flatnonzero(present)
    rows = np.full(batch.num_rows, -1, np.int64)
    rows[idx] = np.arange(idx.size)
    take = pa.array(idx)
    cols = {name: batch.column(col).take(take) for name, col in JOINED.items()}
    return _profiles_of(cols, np.zeros(idx.size, np.uint64), "", population), rows


def join_profile_rows(df: Any, files: tuple[str, ...]) -> Any:
    """``df`` (Spark, with ``entity``) with its entities' profile columns (:data:`JOINED`; null without one):
    a left join on the entity with the rows table (its Parquet ``files``, read by Python tasks, one per
    file), so that each scoring batch brings its own profiles."""
    spark = df.sparkSession
    listing = spark.createDataFrame(spark.sparkContext.parallelize([(f,) for f in files], max(1, len(files))),
                                    "file string")  # fmt: skip
    ddl = "entity string, " + ", ".join(f"{j} array<{'float' if c == 'q' else 'bigint'}>" for c, j in JOINED.items())
    return df.join(listing.mapInArrow(_joined_batches, ddl), on="entity", how="left")
