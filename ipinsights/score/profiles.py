"""Entity profiles: what each training entity's normal looks like, for percentiles and explanations.

For every entity of the training days, a profile holds:

* the quantiles of its own anomaly scores over its training events (``QUANTILES``: 0, 5, ..., 100 %),
  so a new score can be placed as a per-entity percentile ("more unusual than 97 % of this user's
  normal logins") and the entity's typical score range can be shown next to a flagged case;
* its known networks: the ``max_networks`` most used /24s (IPv4) or /48s (IPv6), each with a
  representative address key (the most used address in it) and the event count, which the
  explanations compare a flagged address with, by prefix and by embedding similarity;
* the ASNs it used, when an ASN table was given (:class:`ipinsights.core.asn.AsnTable`);
* its history (:class:`EntityHistory`), what the fused risk score's features
  (:mod:`ipinsights.score.features`) read: its training logins and distinct /24s (/48s), the day it
  last used each known network, its logins and last day per AS, its ``max_networks`` most used /16s
  (/32s) and its logins per country; with user agents in the events, its ``max_networks`` most used
  devices (browser family, OS family and device type: a version update is the same device) with their
  logins and last day, and its ``max_networks`` most used user-agent strings.

And for the population (:class:`PopulationPrior`): how many training events every /24 (IPv6 /48) and
/16 (/32) saw, across all entities. That is the prior that judges entities in their learning period:
an address in a network many people log in from is typical, one in a network nobody used is not. It
also counts the distinct entities of every /24 (/48), /16 (/32) and AS, and the entities in all: how
common a network is across the population (a network half the company uses is a weak signal), and the
distinct entities of every device and user-agent string (a browser half the company uses says little;
a client string one entity used says much).

Stored beside the model in two parts, each sized by what it describes:

* ``<model_dir>.profile.safetensors``, the **header**: the population counts (bounded by the number of
  networks, not of entities), the model's fingerprint (like a calibration, a profile is a property of
  (model, traffic) and is refused for any other model) and the name of its rows table;
* ``<model_dir>.profile.rows-<build>/``, the **rows**: Parquet files of one row per entity
  (:data:`~ipinsights.score.profile_rows.ROW_SCHEMA`; about ``8 * (6 + 21/2 + 5 * max_networks)``
  bytes each, plus 24 per AS and 16 per country it used), written by the executors that built it,
  named in the header.

Both are read and written by Python (``pyarrow.fs``), like every file beside a model: a model on S3 needs
no Hadoop S3 connector for them. This module holds the profiles in memory and reads the header
(:meth:`ProfileHeader.load`); :mod:`ipinsights.score.profile_rows` writes both files and reads the rows.

The Spark jobs never load the rows whole: each scoring batch is joined with its own entities' rows
(:func:`ipinsights.score.profile_rows.joined_profiles`), so a scoring worker holds the header and one
batch. In-process scoring (the CLI, the endpoint) loads them all
(:func:`ipinsights.score.profile_rows.load_profiles`). The header is written last and names its rows, so
a reader sees a whole profile or the previous one, never half of one.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ipinsights.core.entities import find_sorted
from ipinsights.storage.files import is_file, read_bytes

log = logging.getLogger(__name__)


FORMAT = "ipinsights-profile"
# 1: one safetensors file with every entity's arrays; 2: rows without the history; 3: without the devices
# (all refused: the scoring job rebuilds them).
VERSION = "4"


#: Quantile levels of each entity's training anomaly scores.
QUANTILES = np.linspace(0.0, 1.0, 21)


SUBNET_V4, SUBNET_V6 = 24, 48  # the "known network" granularity: a /24, or an IPv6 site (/48)


NETWORK_V4, NETWORK_V6 = 16, 32  # the coarser one: a /16, or an IPv6 ISP allocation (/32)


def _counts_of(ids: np.ndarray, counts: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``counts`` of each ``wanted`` id in the sorted ``ids`` (0 where absent)."""
    if not ids.size:
        return np.zeros(len(wanted))
    pos, found = find_sorted(ids, wanted)
    return np.where(found, counts[pos], 0).astype(np.float64)


class ProfileError(ValueError):
    """A profile file is missing, malformed, or belongs to another model."""


def _none() -> np.ndarray:
    return np.zeros(0, np.int64)


@dataclass(frozen=True)
class PopulationPrior:
    """Training events and distinct entities per /24 (/48) and per /16 (/32) network ids (``ip.key_prefix``),
    distinct entities per AS, each sorted by id; and the number of entities in all."""

    subnets: np.ndarray = field(default_factory=_none)
    subnet_counts: np.ndarray = field(default_factory=_none)
    networks: np.ndarray = field(default_factory=_none)
    network_counts: np.ndarray = field(default_factory=_none)
    subnet_entities: np.ndarray = field(default_factory=_none)  # aligned with subnets
    network_entities: np.ndarray = field(default_factory=_none)  # aligned with networks
    asns: np.ndarray = field(default_factory=_none)  # AS numbers, sorted (empty without an ASN table)
    asn_entities: np.ndarray = field(default_factory=_none)
    devices: np.ndarray = field(default_factory=_none)  # device ids (``features.event_devices``), sorted
    device_entities: np.ndarray = field(default_factory=_none)
    agents: np.ndarray = field(default_factory=_none)  # user-agent string hashes, sorted
    agent_entities: np.ndarray = field(default_factory=_none)
    entities: int = 0

    def entities_of(self, level: str, ids: np.ndarray) -> np.ndarray:
        """Distinct training entities of each id of ``level`` (networks: ``subnet``, ``network``, ``asn``; the
        client: ``device``, ``agent``)."""
        known, counts = {
            "subnet": (self.subnets, self.subnet_entities),
            "network": (self.networks, self.network_entities),
            "asn": (self.asns, self.asn_entities),
            "device": (self.devices, self.device_entities),
            "agent": (self.agents, self.agent_entities),
        }[level]
        if counts.size != known.size:  # built without the entity counts (a bench, a test)
            return np.zeros(len(ids))
        return _counts_of(known, counts, np.asarray(ids, np.int64))

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
        return {f"pop_{name}": np.asarray(getattr(self, name), np.int64) for name in _POPULATION_ARRAYS}


_POPULATION_ARRAYS = (
    "subnets",
    "subnet_counts",
    "networks",
    "network_counts",
    "subnet_entities",
    "network_entities",
    "asns",
    "asn_entities",
    "devices",
    "device_entities",
    "agents",
    "agent_entities",
)


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
        entities = int(meta.get("entities", 0))
        try:
            arrays = {name: t[f"pop_{name}"] for name in _POPULATION_ARRAYS}
        except KeyError as exc:
            raise ProfileError(f"{path}: missing tensor {exc}") from None
        population = PopulationPrior(**arrays, entities=entities)
        fingerprint = meta.get("model_fingerprint", "")
        return cls(str(path), population, fingerprint, rows, files, entities)

    @property
    def build(self) -> str:
        """The build's name (its rows table's): what a fusion fitted with these profiles records."""
        return self.rows.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class EntityHistory:
    """What each profiled entity did in training, beyond its known networks (rows as in :class:`EntityProfiles`).

    Days are UTC days since 1970-01-01 (-1: unknown, for history without timestamps). The /16 (/32) and
    AS lists, like the known networks, are ragged: entity ``i``'s are ``[offsets[i], offsets[i + 1])``.
    """

    events: np.ndarray  # int64 (n,): training logins
    networks: np.ndarray  # int64 (n,): distinct /24s (/48s), all of them, not only the profiled ones
    net_last: np.ndarray  # int64, aligned with EntityProfiles.net_keys: last day in that network
    wide_offsets: np.ndarray  # int64 (n + 1,)
    wide_keys: np.ndarray  # int64: its max_networks most used /16 (/32) ids (``key_prefix``), most used first
    wide_counts: np.ndarray  # int64
    asn_counts: np.ndarray  # int64, aligned with EntityProfiles.asns: logins from that AS
    asn_last: np.ndarray  # int64, aligned with EntityProfiles.asns: last day there
    country_offsets: np.ndarray  # int64 (n + 1,)
    countries: np.ndarray  # int64: country slots (``asn.country_index``) it logged in from, ascending
    country_counts: np.ndarray  # int64
    # Its clients (empty lists for events without user agents): device ids and user-agent string hashes
    # (``features.event_devices``), most used first.
    device_offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    devices: np.ndarray = field(default_factory=_none)
    device_counts: np.ndarray = field(default_factory=_none)
    device_last: np.ndarray = field(default_factory=_none)
    agent_offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    agents: np.ndarray = field(default_factory=_none)
    agent_counts: np.ndarray = field(default_factory=_none)

    @classmethod
    def unknown(cls, net_offsets: np.ndarray, asn_offsets: np.ndarray) -> EntityHistory:
        """No history (profiles built by hand, a bench): every count 0 and every day unknown."""
        n = net_offsets.size - 1
        return cls(
            events=np.zeros(n, np.int64),
            networks=np.diff(net_offsets).astype(np.int64),
            net_last=np.full(int(net_offsets[-1]), -1, np.int64),
            wide_offsets=np.zeros(n + 1, np.int64),
            wide_keys=_none(),
            wide_counts=_none(),
            asn_counts=np.zeros(int(asn_offsets[-1]), np.int64),
            asn_last=np.full(int(asn_offsets[-1]), -1, np.int64),
            country_offsets=np.zeros(n + 1, np.int64),
            countries=_none(),
            country_counts=_none(),
            device_offsets=np.zeros(n + 1, np.int64),
            agent_offsets=np.zeros(n + 1, np.int64),
        )


@dataclass(frozen=True)
class EntityProfiles:
    """Per-entity score quantiles and known networks, indexed by the entity's 64-bit stable hash.

    Loaded whole for in-process scoring, or built per scoring batch from the profile rows it brings
    (:func:`~ipinsights.score.profile_stream.joined_profiles`: then row ``i`` is the batch's ``i``-th
    profile row, not sorted). Stored and read whole by :mod:`ipinsights.score.profile_rows`.
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
    history: EntityHistory | None = None  # None: profiles built without one (then EntityHistory.unknown)

    def __post_init__(self) -> None:
        if self.history is None:
            object.__setattr__(self, "history", EntityHistory.unknown(self.net_offsets, self.asn_offsets))

    @property
    def hist(self) -> EntityHistory:
        """The history (never None once built)."""
        assert self.history is not None  # __post_init__ fills it
        return self.history

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


def _sibling(path: str, name: str) -> str:
    """``name`` in the folder of ``path`` (same form: local path or URI)."""
    return f"{path.rsplit('/', 1)[0]}/{name}" if "/" in path else name


def _metadata(data: bytes) -> dict[str, str]:
    """A safetensors file's ``__metadata__`` (its JSON header says it; safetensors.numpy.load drops it)."""
    n = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8 : 8 + n]).get("__metadata__") or {})
