"""The entity profiles' files (:mod:`ipinsights.score.profiles`): the rows table and the header that names it.

The rows table, ``<model_dir>.profile.rows-<build>/``, holds Parquet files of one row per entity
(:data:`ROW_SCHEMA`); the header, ``<model_dir>.profile.safetensors``, is written last and names its rows,
so a reader sees a whole profile or the previous one, never half of one. Both are read and written by
Python (``pyarrow.fs``), like every file beside a model: a model on S3 needs no Hadoop S3 connector.

In-process scoring (the CLI, the endpoint) loads every row (:func:`load_profiles`); a Spark scoring batch
brings its own entities' rows, packed (:mod:`ipinsights.score.profile_stream`).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from ipinsights.score.profiles import (
    FORMAT,
    QUANTILES,
    VERSION,
    EntityHistory,
    EntityProfiles,
    PopulationPrior,
    ProfileError,
    ProfileHeader,
)
from ipinsights.storage.files import atomic_write, delete_uri

#: The rows table's columns, and their types (lists of one entity's values).
ROW_SCHEMA = pa.schema(
    [
        ("entity", pa.string()),
        ("entity_hash", pa.int64()),
        ("q", pa.list_(pa.float32())),  # its QUANTILES of its training anomaly scores, ascending
        ("net_keys", pa.list_(pa.int64())),  # a representative address key per known network, most used first
        ("net_counts", pa.list_(pa.int64())),  # training events in that network
        ("asns", pa.list_(pa.int64())),  # ASNs it used, ascending (empty or null without an ASN table)
        # Its history (EntityHistory): days are UTC days since 1970-01-01, -1 unknown.
        ("net_last", pa.list_(pa.int64())),  # last day in each known network (as net_keys)
        ("asn_counts", pa.list_(pa.int64())),  # logins from each AS (as asns)
        ("asn_last", pa.list_(pa.int64())),  # last day in each AS (as asns)
        ("wide_keys", pa.list_(pa.int64())),  # its most used /16 (/32) ids, most used first
        ("wide_counts", pa.list_(pa.int64())),
        ("countries", pa.list_(pa.int64())),  # country slots it logged in from, ascending (with an ASN table)
        ("country_counts", pa.list_(pa.int64())),
        # Its clients (with user agents in the events): devices and user-agent strings, most used first.
        ("devices", pa.list_(pa.int64())),  # device ids (features.event_devices)
        ("device_counts", pa.list_(pa.int64())),
        ("device_last", pa.list_(pa.int64())),  # last day with each device
        ("agents", pa.list_(pa.int64())),  # user-agent string hashes
        ("agent_counts", pa.list_(pa.int64())),
        ("events", pa.int64()),  # training logins
        ("networks", pa.int64()),  # distinct /24s (/48s)
    ]
)

#: The list columns of a row (one entity's values) and its scalar ones.
LISTS = ROW_SCHEMA.names[2:-2]
SCALARS = ROW_SCHEMA.names[-2:]


def rows_table(profiles: EntityProfiles) -> pa.Table:
    """The profiles as rows of :data:`ROW_SCHEMA` (needs their ``entities``)."""
    if profiles.entities is None:
        raise ValueError("profiles without their entity strings cannot be stored (the rows are joined on them)")
    q_offsets = np.arange(len(profiles) + 1, dtype=np.int64) * QUANTILES.size
    h = profiles.hist
    lists = {
        "net_keys": (profiles.net_offsets, profiles.net_keys),
        "net_counts": (profiles.net_offsets, profiles.net_counts),
        "asns": (profiles.asn_offsets, profiles.asns),
        "net_last": (profiles.net_offsets, h.net_last),
        "asn_counts": (profiles.asn_offsets, h.asn_counts),
        "asn_last": (profiles.asn_offsets, h.asn_last),
        "wide_keys": (h.wide_offsets, h.wide_keys),
        "wide_counts": (h.wide_offsets, h.wide_counts),
        "countries": (h.country_offsets, h.countries),
        "country_counts": (h.country_offsets, h.country_counts),
        "devices": (h.device_offsets, h.devices),
        "device_counts": (h.device_offsets, h.device_counts),
        "device_last": (h.device_offsets, h.device_last),
        "agents": (h.agent_offsets, h.agents),
        "agent_counts": (h.agent_offsets, h.agent_counts),
    }
    return pa.Table.from_arrays(
        [
            pa.array(profiles.entities, pa.string()),
            pa.array(profiles.hashes.view(np.int64)),
            _list_array(q_offsets, profiles.score_quantiles.astype(np.float32).ravel(), pa.float32()),
            *(
                _list_array(offsets, np.asarray(values, np.int64), pa.int64())
                for offsets, values in (lists[name] for name in LISTS[1:])
            ),
            pa.array(h.events.astype(np.int64)),
            pa.array(h.networks.astype(np.int64)),
        ],
        schema=ROW_SCHEMA,
    )


def _list_array(offsets: np.ndarray, values: np.ndarray, kind: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, kind))


def save_profiles(profiles: EntityProfiles, path: str | Path) -> str | Path:
    """Write the rows table, then the header that names it (:func:`save_header`); a path or URI."""
    from ipinsights.storage.parquet import write_parquet

    rows = new_rows_uri(path)
    part = write_parquet(rows_table(profiles), f"{rows}/part-00000.parquet")
    save_header(path, profiles.population, profiles.fingerprint, rows, [part], len(profiles))
    return path


def load_profiles(path: str | Path | ProfileHeader, model_dir: str | Path | None = None) -> EntityProfiles:
    """Read a whole profile (header and every row); with ``model_dir``, refuse it unless it is that model's.
    ``path`` may be a header already read."""
    header = path if isinstance(path, ProfileHeader) else ProfileHeader.load(path, model_dir)
    try:
        table = _read_rows(header.files, [n for n in ROW_SCHEMA.names if n != "entity"])
    except (OSError, pa.ArrowException) as exc:
        raise ProfileError(f"{path}: its rows table {header.rows} is not readable ({exc})") from None
    return rows_to_profiles(table, header.fingerprint, header.population)


def new_rows_uri(path: str | Path) -> str:
    """A fresh rows-table URI beside the header ``path``: a build never writes into another's rows."""
    stem = str(path).removesuffix(".safetensors")
    return f"{stem}.rows-{uuid.uuid4().hex[:12]}"


def save_header(
    path: str | Path, population: PopulationPrior, fingerprint: str, rows: str, files: list[str], entities: int
) -> None:
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


def _read_rows(files: tuple[str, ...], columns: list[str]) -> pa.Table:
    """``columns`` of every row of a rows table (its Parquet ``files``)."""
    import pyarrow.dataset as ds

    from ipinsights.storage.filesystems import arrow_fs

    if not files:
        return ROW_SCHEMA.empty_table().select(columns)
    fs = arrow_fs(files[0])[0]
    paths = [arrow_fs(f)[1] for f in files]
    return ds.dataset(paths, filesystem=fs, format="parquet", schema=ROW_SCHEMA).to_table(columns=columns)


def list_parts(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (n + 1,), flat int64 values) of a list column; a null list counts as empty."""
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), flat


def profiles_of_parts(
    lists: dict[str, tuple[np.ndarray, np.ndarray]],
    scalars: dict[str, np.ndarray],
    hashes: np.ndarray,
    population: PopulationPrior,
    fingerprint: str = "",
    entities: np.ndarray | None = None,
) -> EntityProfiles:
    """EntityProfiles of rows given as their list columns' (offsets, flat values) (:data:`LISTS`, ``q`` as
    floats) and their scalar columns (:data:`SCALARS`)."""
    n = hashes.size
    q = lists["q"][1]
    offsets = {name: lists[name][0] for name in LISTS[1:]}
    values = {name: lists[name][1] for name in LISTS[1:]}
    net_offsets, net_keys = offsets["net_keys"], values["net_keys"]
    net_counts = values["net_counts"]
    asn_offsets, asns = offsets["asns"], values["asns"]
    history = EntityHistory(
        events=scalars["events"],
        networks=scalars["networks"],
        net_last=_aligned(values["net_last"], net_keys.size),
        wide_offsets=offsets["wide_keys"],
        wide_keys=values["wide_keys"].astype(np.int64),
        wide_counts=values["wide_counts"].astype(np.int64),
        asn_counts=_aligned(values["asn_counts"], asns.size, 0),
        asn_last=_aligned(values["asn_last"], asns.size),
        country_offsets=offsets["countries"],
        countries=values["countries"].astype(np.int64),
        country_counts=values["country_counts"].astype(np.int64),
        device_offsets=offsets["devices"],
        devices=values["devices"].astype(np.int64),
        device_counts=_aligned(values["device_counts"], values["devices"].size, 0),
        device_last=_aligned(values["device_last"], values["devices"].size),
        agent_offsets=offsets["agents"],
        agents=values["agents"].astype(np.int64),
        agent_counts=_aligned(values["agent_counts"], values["agents"].size, 0),
    )
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
        history=history,
    )


def scalar_column(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An int64 column as numpy, null as 0."""
    import pyarrow.compute as pc

    return np.asarray(pc.fill_null(col, 0).to_numpy(zero_copy_only=False), np.int64)


def _aligned(values: np.ndarray, size: int, missing: int = -1) -> np.ndarray:
    """A list column's flat values that go with another list's (as many), or ``missing`` for each where its
    lists are null (an AS list without counts: never written by this version, but never misaligned either)."""
    if values.size == size:
        return values.astype(np.int64)
    return np.full(size, missing, np.int64)


def rows_to_profiles(table: pa.Table, fingerprint: str, population: PopulationPrior) -> EntityProfiles:
    """EntityProfiles of a rows table (:data:`ROW_SCHEMA`; ``entity`` may be left out), sorted by entity hash.

    Looked up by hash, they need no entity strings: those are kept only when the table has them.
    """
    h = table["entity_hash"].to_numpy().view(np.uint64)
    order = np.argsort(h, kind="stable")
    table = table.take(pa.array(order))
    lists = {name: list_parts(table[name]) for name in LISTS}
    scalars = {name: scalar_column(table[name]) for name in SCALARS}
    names = table["entity"].to_numpy(zero_copy_only=False) if "entity" in table.column_names else None
    return profiles_of_parts(lists, scalars, h[order], population, fingerprint, names)
