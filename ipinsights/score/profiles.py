"""Entity profiles: what each training entity's normal looks like, for percentiles and explanations.

For every entity of the training days, a profile holds:

* the quantiles of its own anomaly scores over its training events (``QUANTILES``: 0, 5, ..., 100 %),
  so a new score can be placed as a per-entity percentile ("more unusual than 97 % of this user's
  normal logins") and the entity's typical score range can be shown next to a flagged case;
* its known networks: the ``max_networks`` most used /24s (IPv4) or /48s (IPv6), each with a
  representative address key (the most used address in it) and the event count, which the
  explanations compare a flagged address with, by prefix and by embedding similarity;
* the ASNs it used, when an ASN table was given (:class:`ipinsights.asn.AsnTable`).

And for the population: how many training events every /24 (IPv6 /48) and /16 (/32) saw, across all
entities. That is the **population prior** that judges entities in their learning period: an address
in a network many people log in from is typical, one in a network nobody used is not
(:meth:`EntityProfiles.prior_anomaly`).

Built on Spark from the training days (one aggregation, one row per entity back to the driver, like
the entity statistics) and stored beside the model as ``<model_dir>.profile.safetensors``, with the
model's fingerprint: like a calibration it is a property of (model, traffic) and is refused for any
other model. Size: about ``8 * (4 + 21/2 + 2 * max_networks)`` bytes per entity.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ipinsights.core.entities import find_sorted
from ipinsights.storage.files import atomic_write, is_file, local_copy

log = logging.getLogger(__name__)


FORMAT = "ipinsights-profile"


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


@dataclass(frozen=True)
class EntityProfiles:
    """Per-entity score quantiles and known networks, indexed by the entity's 64-bit stable hash."""

    hashes: np.ndarray  # uint64 (n,), sorted
    score_quantiles: np.ndarray  # float32 (n, len(QUANTILES)): anomaly scores of the training events
    net_offsets: np.ndarray  # int64 (n + 1,): entity i's networks are [net_offsets[i], net_offsets[i+1])
    net_keys: np.ndarray  # int64: a representative address key of each known network, most used first
    net_counts: np.ndarray  # int64: training events in that network
    asn_offsets: np.ndarray  # int64 (n + 1,)
    asns: np.ndarray  # int64: ASNs the entity used (empty without an ASN table)
    fingerprint: str
    # Population: training events per /24 (/48) and per /16 (/32) network ids (ip.key_prefix), sorted.
    pop_subnets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pop_subnet_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pop_networks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pop_network_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def prior_anomaly(self, keys: np.ndarray) -> np.ndarray:
        """Population-prior anomaly score of address keys: ``-log`` of the smoothed share of training events
        in the address's /24 (/48), backed off to a tenth of its /16 (/32) share for a subnet nobody used.

        Higher = rarer for everyone. Units: nats; 0 would be "all traffic comes from here".
        """
        from ipinsights.core.ip import key_prefix

        # Looked up once per distinct address, in sorted order: traffic repeats addresses, and sorted
        # probes walk the sorted population arrays in order (several times faster than random ones).
        uniq, inv = np.unique(np.asarray(keys, dtype=np.int64), return_inverse=True)
        sub = _counts_of(self.pop_subnets, self.pop_subnet_counts, key_prefix(uniq, SUBNET_V4, SUBNET_V6))
        net = _counts_of(self.pop_networks, self.pop_network_counts, key_prefix(uniq, NETWORK_V4, NETWORK_V6))
        return (-np.log((sub + 0.1 * net + 1.0) / self._pop_total))[inv]

    @functools.cached_property
    def _pop_total(self) -> float:
        return float(self.pop_subnet_counts.sum()) + 1.0

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
    def save(self, path: str | Path) -> str | Path:
        """Write atomically as safetensors (no pickle), the fingerprint in the metadata."""
        from safetensors.numpy import save

        tensors: dict[str, np.ndarray] = {
            "hashes": self.hashes.view(np.int64),
            "score_quantiles": self.score_quantiles.astype(np.float32),
            "net_offsets": self.net_offsets.astype(np.int64),
            "net_keys": self.net_keys.astype(np.int64),
            "net_counts": self.net_counts.astype(np.int64),
            "asn_offsets": self.asn_offsets.astype(np.int64),
            "asns": self.asns.astype(np.int64),
            "pop_subnets": self.pop_subnets.astype(np.int64),
            "pop_subnet_counts": self.pop_subnet_counts.astype(np.int64),
            "pop_networks": self.pop_networks.astype(np.int64),
            "pop_network_counts": self.pop_network_counts.astype(np.int64),
        }
        meta = {"format": FORMAT, "model_fingerprint": self.fingerprint, "quantiles": json.dumps(QUANTILES.tolist())}
        with atomic_write(path, mode="wb") as fh:  # a path or URI
            fh.write(save(tensors, metadata=meta))
        return path

    @classmethod
    def load(cls, path: str | Path, model_dir: str | Path | None = None) -> EntityProfiles:
        """Read a profile file; with ``model_dir``, refuse it unless it was made for that model."""
        from safetensors import SafetensorError, safe_open

        from ipinsights.storage.modelfile import model_fingerprint

        if not is_file(path):
            raise ProfileError(f"{path}: no profile file")
        try:
            with safe_open(str(local_copy(path)), framework="numpy") as f:  # a URI: a cached download
                meta = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ProfileError(f"{path}: not a readable profile file ({exc})") from None
        if meta.get("format") != FORMAT or json.loads(meta.get("quantiles", "[]")) != QUANTILES.tolist():
            raise ProfileError(f"{path}: not an ipinsights profile of this version")
        if model_dir is not None and meta.get("model_fingerprint") != model_fingerprint(model_dir):
            raise ProfileError(f"{path}: made for another model than {model_dir} (rebuild it)")
        try:
            return cls(
                hashes=t["hashes"].view(np.uint64),
                score_quantiles=t["score_quantiles"],
                net_offsets=t["net_offsets"],
                net_keys=t["net_keys"],
                net_counts=t["net_counts"],
                asn_offsets=t["asn_offsets"],
                asns=t["asns"],
                fingerprint=meta.get("model_fingerprint", ""),
                pop_subnets=t["pop_subnets"],
                pop_subnet_counts=t["pop_subnet_counts"],
                pop_networks=t["pop_networks"],
                pop_network_counts=t["pop_network_counts"],
            )
        except KeyError as exc:
            raise ProfileError(f"{path}: missing tensor {exc}") from None


def assemble_profiles(rows: Any, fingerprint: str) -> EntityProfiles:
    """Numpy arrays of the per-entity rows, sorted by hash (vectorized over the Arrow list columns)."""
    import pyarrow.compute as pc

    h = rows["entity_hash"].to_numpy().view(np.uint64)
    order = np.argsort(h, kind="stable")
    rows = rows.take(order)
    q = np.asarray(pc.list_flatten(rows["q"]).to_numpy(zero_copy_only=False), np.float32).reshape(-1, QUANTILES.size)
    nets = rows["nets"].combine_chunks()
    flat = pc.list_flatten(nets)
    n_nets = pc.list_value_length(nets).to_numpy(zero_copy_only=False).astype(np.int64)
    asn_col = pc.fill_null(rows["asns"], pa_empty_list()).combine_chunks() if rows.num_rows else None
    n_asn = pc.list_value_length(asn_col).to_numpy(zero_copy_only=False).astype(np.int64) if asn_col else np.zeros(0)
    return EntityProfiles(
        hashes=h[order],
        score_quantiles=np.sort(q, axis=1),
        net_offsets=np.concatenate([[0], np.cumsum(n_nets)]).astype(np.int64),
        net_keys=flat.field("key").to_numpy(zero_copy_only=False).astype(np.int64),
        net_counts=flat.field("n").to_numpy(zero_copy_only=False).astype(np.int64),
        asn_offsets=np.concatenate([[0], np.cumsum(n_asn)]).astype(np.int64),
        asns=(pc.list_flatten(asn_col).to_numpy(zero_copy_only=False) if asn_col else np.zeros(0)).astype(np.int64),
        fingerprint=fingerprint,
    )


def pa_empty_list():
    import pyarrow as pa

    return pa.scalar([], pa.list_(pa.int64()))
