"""The fused risk score's features: one numpy function of a batch of events and their entities' profiles.

:func:`event_features` is the only place the features are computed, whatever the way of scoring: the
Spark jobs (each batch brings its own entities' profile rows, streamed with the events), the batch transform, the
endpoint and ``evaluate`` (profiles loaded whole) and the fusion's fit (:mod:`ipinsights.score.fusion`).
It reads the entity's history and the population from the profiles (:mod:`ipinsights.score.profiles`:
built from the training days) and the address's network from the ip2asn table.

The features, by name (:data:`FEATURES`); counts are ``log1p`` of logins in the training days:

* the model: ``dot_product`` (0 for an entity without a profile: an entity never seen in training
  has a hashed, untrained vector, which must not count silently);
* the entity's history of the event's networks: ``as_seen``, ``as_logins``, ``as_days`` (its AS),
  ``subnet_seen``, ``subnet_logins``, ``subnet_days`` (its /24, IPv6 /48), ``network_logins`` (its /16,
  /32), ``country_logins``; and of the entity: ``entity_logins``, ``entity_networks`` (distinct /24s).
  The ``*_days`` are ``log1p`` of the days since the entity last used that network, for events with a
  timestamp (the events table); **where there is none (a batch-transform CSV, the endpoint, a labelled
  CSV in evaluate) they are 0**, as they are for a network the entity never used;
* the population: ``as_share``, ``subnet_share``, ``network_share``: ``log((entities + 1) / (all + 1))``
  with ``entities`` the training entities that used the network, ``all`` every profiled entity;
* the client (with user agents in the events, :mod:`ipinsights.score.clients`): ``device_seen`` (the entity used
  this device in training: browser family, OS family and device type, so a version update is the same device),
  ``device_new`` (it did not, and it used devices with a user agent), ``device_logins``, ``device_days``,
  ``agent_seen`` (the exact user-agent string), ``device_share`` and ``agent_share`` (how common the device
  and the string are across the training entities), ``device_missing`` (the event has no user agent);
  NaN ("unknown": the fusion weighs them as the average event) for an event without one, but
  ``device_missing``;
* the network: ``hosting`` (an AS whose name says hosting, cloud, server, datacenter, vps or colo, or
  one of the fusion's hosting AS numbers: :mod:`ipinsights.score.hosting`, ``hosting_asns.txt``),
  ``outside_table`` (a table is given and no range holds the address), ``reserved`` (a special-purpose
  address: private, loopback, documentation, multicast, ... :data:`RESERVED_V4`; IPv6 outside 2000::/3).

Without an ip2asn table the AS, country and hosting features are 0. A feature name ``a*b`` is the
product of two features (an interaction); the fusion file lists the names it uses.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ipinsights.core.config import IPV4_KEYS
from ipinsights.core.ip import key_prefix
from ipinsights.score.clients import EventDevices
from ipinsights.score.hosting import hosting_rows
from ipinsights.score.profiles import NETWORK_V4, NETWORK_V6, SUBNET_V4, SUBNET_V6

if TYPE_CHECKING:
    from ipinsights.core.asn import AsnTable
    from ipinsights.score.profiles import EntityProfiles

__all__ = ["FEATURES", "RESERVED_V4", "event_days", "event_features", "reserved"]

#: Every base feature and what it says (the fusion's explanations word them: :mod:`ipinsights.score.explain`).
FEATURES = {
    "dot_product": "the model's dot product (0 for an entity without a profile)",
    "device_seen": "1 when the entity used the event's device (browser, OS and device type) in training",
    "device_new": "1 when the event's device is not one the entity used in training (and it used some)",
    "device_logins": "log1p(the entity's training logins with that device)",
    "device_days": "log1p(days since the entity last used that device); 0 when never, or without a timestamp",
    "agent_seen": "1 when the entity used the event's exact user-agent string in training",
    "device_share": "log((entities that used the device + 1) / (all entities + 1))",
    "agent_share": "log((entities that used the user-agent string + 1) / (all entities + 1))",
    "device_missing": "1 when the event has no user agent",
    "as_seen": "1 when the entity logged in from the address's AS in training",
    "as_logins": "log1p(the entity's training logins from that AS)",
    "as_days": "log1p(days since the entity last used that AS); 0 when never, or without a timestamp",
    "subnet_seen": "1 when the entity logged in from the address's /24 (/48) in training",
    "subnet_logins": "log1p(the entity's training logins from that /24 (/48))",
    "subnet_days": "log1p(days since the entity last used that /24 (/48)); 0 when never, or without a timestamp",
    "network_logins": "log1p(the entity's training logins from the address's /16 (/32))",
    "country_logins": "log1p(the entity's training logins from the address's country)",
    "entity_logins": "log1p(the entity's training logins)",
    "entity_networks": "log1p(the entity's distinct /24s (/48s) in training)",
    "as_share": "log((entities that used the AS + 1) / (all entities + 1))",
    "subnet_share": "log((entities that used the /24 (/48) + 1) / (all entities + 1))",
    "network_share": "log((entities that used the /16 (/32) + 1) / (all entities + 1))",
    "hosting": "1 in a hosting or cloud AS (its name, or the hosting AS numbers)",
    "outside_table": "1 when the ip2asn table holds no range of the address",
    "reserved": "1 for a special-purpose address (private, loopback, documentation, multicast...)",
}

#: IPv4 special-purpose ranges (RFC 6890 and successors): never a client's routed address.
RESERVED_V4 = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/3",  # multicast and the old class E
)
#: IPv6 special-purpose ranges inside the global unicast block 2000::/3 (everything outside it is reserved).
RESERVED_V6 = ("2001:db8::/32", "3fff::/20", "2001:2::/48", "2001:10::/28", "2001:20::/28")


def _key_ranges(cidrs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (start, end) address-key ranges of CIDR blocks (IPv6 keys: the top 64 bits, signed)."""
    starts, ends = [], []
    for text in cidrs:
        net = ipaddress.ip_network(text)
        lo, hi = int(net.network_address), int(net.broadcast_address)
        if net.version == 6:
            lo, hi = lo >> 64, hi >> 64
            lo, hi = (lo - (1 << 64) if lo >= 1 << 63 else lo), (hi - (1 << 64) if hi >= 1 << 63 else hi)
        starts.append(lo)
        ends.append(hi)
    order = np.argsort(starts)
    return np.asarray(starts, np.int64)[order], np.asarray(ends, np.int64)[order]


_RESERVED = _key_ranges(RESERVED_V4 + RESERVED_V6)
_GLOBAL_V6 = (0x2000 << 48, (0x4000 << 48) - 1)  # 2000::/3 in key space (positive: below 2**63)


def reserved(keys: np.ndarray) -> np.ndarray:
    """Whether each address key is a special-purpose address (see :data:`RESERVED_V4`; IPv6 outside 2000::/3)."""
    k = np.asarray(keys, np.int64)
    starts, ends = _RESERVED
    i = np.searchsorted(starts, k, side="right") - 1
    inside = (i >= 0) & (k <= ends[np.maximum(i, 0)])
    v6 = (k < 0) | (k >= IPV4_KEYS)
    outside_global = v6 & ((k < _GLOBAL_V6[0]) | (k > _GLOBAL_V6[1]))
    return inside | outside_global


def event_days(ts: pa.Array | pa.ChunkedArray | None, n: int) -> np.ndarray:
    """UTC days since 1970-01-01 of a timestamp column (float64, NaN where null; all NaN without one)."""
    import pyarrow.compute as pc

    if ts is None:
        return np.full(n, np.nan)
    micros = pc.cast(pc.cast(ts, pa.timestamp("us")), pa.int64())
    return np.floor(pc.divide(pc.cast(micros, pa.float64()), 86_400e6).to_numpy(zero_copy_only=False))


def event_features(
    names: Iterable[str],
    keys: np.ndarray,
    rows: np.ndarray,
    profiles: EntityProfiles,
    dot_product: np.ndarray,
    asn_table: AsnTable | None = None,
    days: np.ndarray | None = None,
    hosting_asns: Sequence[int] = (),
    devices: EventDevices | None = None,
) -> dict[str, np.ndarray]:
    """The named features (:data:`FEATURES`, or products ``a*b`` of them) of events: address ``keys``, their
    entities' profile ``rows`` (-1: no profile) in ``profiles``, the model's ``dot_product``, the events'
    ``days`` (:func:`event_days`; None or NaN: no timestamp) and ``devices`` (``clients.event_devices``; None: no
    user agents). float64 arrays, one value per event; the caller leaves out invalid addresses."""
    keys, rows = np.asarray(keys, np.int64), np.asarray(rows, np.int64)
    clients = EventDevices.none(keys.size) if devices is None else devices
    batch = _Batch(keys, rows, profiles, dot_product, asn_table, days, tuple(hosting_asns), clients)
    out: dict[str, np.ndarray] = {}
    for name in names:
        parts = name.split("*")
        value = batch.feature(parts[0])
        for other in parts[1:]:
            value = value * batch.feature(other)
        out[name] = value
    return out


class _Batch:
    """One batch's features, each computed once when first asked for (:meth:`feature`)."""

    def __init__(
        self,
        keys: np.ndarray,
        rows: np.ndarray,
        profiles: EntityProfiles,
        dot_product: np.ndarray,
        asn_table: AsnTable | None,
        days: np.ndarray | None,
        hosting_asns: tuple[int, ...],
        clients: EventDevices,
    ) -> None:
        self.keys, self.table, self.n = keys, asn_table, keys.size
        self.clients = clients
        self.profiles, self.rows = profiles, rows
        self.dp = np.asarray(dot_product, np.float64)
        self.days = np.full(keys.size, np.nan) if days is None else np.asarray(days, np.float64)
        self.hosting_asns = hosting_asns
        self._done: dict[str, np.ndarray] = {}
        self._known = self.rows >= 0

    def feature(self, name: str) -> np.ndarray:
        if name not in self._done:
            if name not in FEATURES:
                raise ValueError(f"unknown feature {name!r}; known: {', '.join(FEATURES)}")
            self._done.update(getattr(self, f"_{name}")())
        return self._done[name]

    # -- the address's network ------------------------------------------------------------------

    @functools.cached_property
    def _table_rows(self) -> np.ndarray:
        return self.table.find(self.keys) if self.table is not None else np.full(self.n, -1, np.int64)

    def _column(self, values: Callable[[AsnTable], np.ndarray]) -> np.ndarray:
        """A column of the table (AS numbers, country slots) at each address's row; -1 outside it or without one."""
        if self.table is None:
            return np.full(self.n, -1, np.int64)
        r = self._table_rows
        return np.where(r >= 0, values(self.table)[np.maximum(r, 0)], -1).astype(np.int64)

    def _hosting(self) -> dict[str, np.ndarray]:
        if self.table is None:
            return {"hosting": np.zeros(self.n)}
        r = self._table_rows
        return {"hosting": np.where(r >= 0, hosting_rows(self.table, self.hosting_asns)[np.maximum(r, 0)], False) * 1.0}

    def _outside_table(self) -> dict[str, np.ndarray]:
        return {"outside_table": (self._table_rows < 0) * 1.0 if self.table is not None else np.zeros(self.n)}

    def _reserved(self) -> dict[str, np.ndarray]:
        return {"reserved": reserved(self.keys) * 1.0}

    # -- the model --------------------------------------------------------------------------------

    def _dot_product(self) -> dict[str, np.ndarray]:
        return {"dot_product": np.where(self._known & np.isfinite(self.dp), self.dp, 0.0)}

    # -- the entity's history of the event's networks ----------------------------------------------

    def _seen(self, name: str, at: np.ndarray, counts: np.ndarray, last: np.ndarray | None) -> dict[str, np.ndarray]:
        """``<name>_seen``, ``<name>_logins`` and ``<name>_days`` of events whose entity's list index is ``at``."""
        hit = at >= 0
        n = np.where(hit, counts[np.maximum(at, 0)] if counts.size else 0, 0).astype(np.float64)
        out = {f"{name}_seen": hit * 1.0, f"{name}_logins": np.log1p(n)}
        if last is not None:
            day = np.where(hit, last[np.maximum(at, 0)] if last.size else -1, -1).astype(np.float64)
            known = hit & (day >= 0) & np.isfinite(self.days)
            out[f"{name}_days"] = np.where(known, np.log1p(np.maximum(self.days - day, 0.0)), 0.0)
        return out

    def _as(self) -> dict[str, np.ndarray]:
        p = self.profiles
        asn = self._column(lambda t: t.asn)
        at = _find(p.asn_offsets, p.asns, np.where(asn >= 0, self.rows, -1), asn)
        return self._seen("as", at, p.hist.asn_counts, p.hist.asn_last)

    _as_seen = _as_logins = _as_days = _as

    def _subnet(self) -> dict[str, np.ndarray]:
        p = self.profiles
        at = _find(
            p.net_offsets,
            p.net_keys,
            self.rows,
            key_prefix(self.keys, SUBNET_V4, SUBNET_V6),
            lambda k: key_prefix(k, SUBNET_V4, SUBNET_V6),  # the known networks are kept as an address each
        )
        return self._seen("subnet", at, p.net_counts, p.hist.net_last)

    _subnet_seen = _subnet_logins = _subnet_days = _subnet

    def _network_logins(self) -> dict[str, np.ndarray]:
        h = self.profiles.hist
        at = _find(h.wide_offsets, h.wide_keys, self.rows, key_prefix(self.keys, NETWORK_V4, NETWORK_V6))
        return {"network_logins": self._seen("network", at, h.wide_counts, None)["network_logins"]}

    def _country_logins(self) -> dict[str, np.ndarray]:
        h = self.profiles.hist
        country = self._column(lambda t: t.country)
        at = _find(h.country_offsets, h.countries, np.where(country >= 0, self.rows, -1), country)
        return {"country_logins": self._seen("country", at, h.country_counts, None)["country_logins"]}

    def _entity(self) -> dict[str, np.ndarray]:
        h = self.profiles.hist
        r = np.maximum(self.rows, 0)
        total = np.where(self._known, h.events[r] if h.events.size else 0, 0)
        nets = np.where(self._known, h.networks[r] if h.networks.size else 0, 0)
        return {"entity_logins": np.log1p(total.astype(np.float64)), "entity_networks": np.log1p(nets * 1.0)}

    _entity_logins = _entity_networks = _entity

    # -- the entity's history of the event's client ------------------------------------------------

    def _has_devices(self) -> bool:
        """Whether the profiles hold device lists (built from events with user agents, by this version)."""
        return self.profiles.hist.device_offsets.size == self.profiles.net_offsets.size

    def _unknown(self, values: np.ndarray) -> np.ndarray:
        """``values``, NaN where the event has no user agent (its client is unknown, not new)."""
        return np.where(self.clients.agent != 0, values, np.nan)

    def _device(self) -> dict[str, np.ndarray]:
        h, c = self.profiles.hist, self.clients
        has = c.device != 0
        if not self._has_devices():
            zero = np.zeros(self.n)
            out = {"device_seen": zero, "device_new": zero, "device_logins": zero, "device_days": zero}
        else:
            at = _find(h.device_offsets, h.devices, np.where(has, self.rows, -1), c.device)
            out = self._seen("device", at, h.device_counts, h.device_last)
            # New only against a known set: an entity whose training logins had no user agent has none.
            used = self._known & (np.diff(h.device_offsets)[np.maximum(self.rows, 0)] > 0)
            out["device_new"] = (has & (at < 0) & used) * 1.0
        return {name: self._unknown(values) for name, values in out.items()}

    _device_seen = _device_new = _device_logins = _device_days = _device

    def _agent_seen(self) -> dict[str, np.ndarray]:
        h, c = self.profiles.hist, self.clients
        if not self._has_devices():
            return {"agent_seen": self._unknown(np.zeros(self.n))}
        at = _find(h.agent_offsets, h.agents, np.where(c.agent != 0, self.rows, -1), c.agent)
        return {"agent_seen": self._unknown((at >= 0) * 1.0)}

    def _device_share(self) -> dict[str, np.ndarray]:
        d = self.clients.device
        return {"device_share": self._unknown(self._share("device", d))}

    def _agent_share(self) -> dict[str, np.ndarray]:
        a = self.clients.agent
        return {"agent_share": self._unknown(self._share("agent", a))}

    def _device_missing(self) -> dict[str, np.ndarray]:
        return {"device_missing": (self.clients.agent == 0) * 1.0}

    # -- the population ---------------------------------------------------------------------------

    def _share(self, level: str, ids: np.ndarray) -> np.ndarray:
        pop = self.profiles.population
        # Once per distinct network, in sorted order: sorted probes walk the population's arrays in order.
        uniq, inv = np.unique(ids, return_inverse=True)
        entities = pop.entities_of(level, uniq)[inv]
        return np.log((entities + 1.0) / (pop.entities + 1.0))

    def _as_share(self) -> dict[str, np.ndarray]:
        asn = self._column(lambda t: t.asn)
        return {"as_share": self._share("asn", asn)}  # outside the table: as rare as an AS nobody used

    def _subnet_share(self) -> dict[str, np.ndarray]:
        return {"subnet_share": self._share("subnet", key_prefix(self.keys, SUBNET_V4, SUBNET_V6))}

    def _network_share(self) -> dict[str, np.ndarray]:
        return {"network_share": self._share("network", key_prefix(self.keys, NETWORK_V4, NETWORK_V6))}


def _find(
    offsets: np.ndarray,
    values: np.ndarray,
    rows: np.ndarray,
    wanted: np.ndarray,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Flat index into ``values`` (lists ragged by ``offsets``) of ``wanted[i]`` within list ``rows[i]`` (its
    first match; ``transform`` applied to the values first); -1 where it is not in that list or ``rows[i]``
    is -1.

    The lists are short (an entity's networks): the ``j``-th element of every row's list is compared at once,
    for ``j = 0, 1, ...``, among the rows still unmatched with lists that long. Only the batch's own lists are
    read (the profiles may be every entity's, loaded whole by the endpoint), and nothing is sorted."""
    rows = np.asarray(rows, np.int64)
    want = np.asarray(wanted, np.int64)
    out = np.full(rows.size, -1, np.int64)
    idx = np.flatnonzero(rows >= 0)
    if not idx.size or not values.size:
        return out
    start = offsets[rows[idx]]
    length = offsets[rows[idx] + 1] - start
    j = 0
    while True:
        live = length > j
        idx, start, length = idx[live], start[live], length[live]
        if not idx.size:
            return out
        pos = start + j
        got = values[pos] if transform is None else transform(values[pos])
        hit = got == want[idx]
        out[idx[hit]] = pos[hit]
        miss = ~hit
        idx, start, length = idx[miss], start[miss], length[miss]
        j += 1
