"""Explanations: why a scored row looks the way it does, from its entity's profile (:meth:`Scorer.explain`).

The address is placed next to what the entity's profile (:mod:`ipinsights.score.profiles`) says is its
normal: its /24 and /16 (IPv6: /48 and /32) and whether the entity used them in training, its AS and the
entity's usual ones (with an ASN table), the entity's known networks nearest by embedding and by prefix,
and the entity's typical anomaly-score range. With a fused risk score (:mod:`ipinsights.score.fusion`),
``risk_factors`` words what raised it most (:func:`risk_factors`): "new AS for this entity; AS used by
0.01% of entities; hosting range".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ipinsights.core.ip import ParsedIPs, is_ipv6_key, key_prefix, key_prefix_text

if TYPE_CHECKING:
    from ipinsights.core.asn import AsnTable
    from ipinsights.score.clients import EventDevices
    from ipinsights.score.fusion import FusionModel
    from ipinsights.score.profiles import EntityProfiles, PopulationPrior

#: The columns in the order :meth:`Explanations.columns` gives them (the endpoint's JSON objects follow it).
COLUMNS = (
    "subnet",
    "network",
    "asn",
    "as_name",
    "usual_ases",
    "typical_low",
    "typical_high",
    "subnet_seen",
    "network_seen",
    "asn_seen",
    "nearest_networks",
    "closest_network",
    "known_networks",
    "usual_events",
    "shared_prefix_bits",
    "risk_factors",
    "device",
    "agent_entities",
)


@dataclass(frozen=True)
class Explanations:
    """The explanation of a batch of rows: one list per column, one Python value per row.

    None where there is nothing to say: an invalid address, an entity without a profile (or, for the
    known-network columns, with no known network), no ASN table.
    """

    subnet: list[str | None]  # the address's /24 (IPv6: /48)
    subnet_seen: list[bool | None]  # the entity used that /24 (/48) in training (among its profiled networks)
    network: list[str | None]  # the address's /16 (IPv6: /32)
    network_seen: list[bool | None]  # the entity used that /16 (/32) in training (likewise)
    asn: list[int | None]  # the address's ASN (with an ASN table)
    asn_seen: list[bool | None]  # the entity used that AS in training
    as_name: list[str | None]  # that AS as people know it: "AS64512 Kalonet Mobile (BR)"
    usual_ases: list[str | None]  # the entity's ASes in training, named so, "; "-separated
    nearest_networks: list[list[dict[str, Any]] | None]  # the `top` known networks most similar by embedding
    closest_network: list[str | None]  # the known network sharing the longest prefix with the address
    shared_prefix_bits: list[int | None]  # how many leading bits the two share
    typical_low: list[float | None]  # the entity's usual anomaly scores: 5th percentile of its training events
    typical_high: list[float | None]  # ... and their 95th percentile
    known_networks: list[int | None]  # how many networks the profile keeps for the entity
    usual_events: list[int | None]  # its training events in its two most used networks
    risk_factors: list[str | None]  # what raised its fused risk score most, in words (None without a fusion)
    device: list[str | None] = field(default_factory=list)  # the client against the entity's: device_words
    agent_entities: list[int | None] = field(default_factory=list)  # training entities with its user-agent string

    def __post_init__(self) -> None:
        for column in (self.device, self.agent_entities):
            if not column:
                column.extend([None] * len(self.subnet))

    def columns(self) -> dict[str, list]:
        """``{column: values}`` in :data:`COLUMNS` order (the lists themselves, not copies)."""
        return {name: getattr(self, name) for name in COLUMNS}


def explain_rows(
    parsed: ParsedIPs,
    rows: np.ndarray,
    profiles: EntityProfiles | None,
    asn_table: AsnTable | None,
    ip_vectors: Callable[[np.ndarray], np.ndarray],
    top: int = 3,
) -> Explanations:
    """The explanation of rows with addresses ``parsed`` whose entities are profile ``rows`` of ``profiles``
    (-1: none). ``ip_vectors``: the model's ``(n, vector_dim)`` vectors of int64 address keys;
    ``nearest_networks`` lists ``top`` networks (network, cosine similarity, events)."""
    keys, valid = parsed.value, parsed.valid
    n = keys.size
    rows = np.where(valid, rows, -1)
    asn = asn_table.lookup(keys) if asn_table is not None else None
    low, high = _typical_range(profiles, rows, n)
    ex = Explanations(
        subnet=_texts(keys, valid, 24, 48),
        subnet_seen=[None] * n,
        network=_texts(keys, valid, 16, 32),
        network_seen=[None] * n,
        asn=[None if asn is None or not valid[i] or asn[i] < 0 else int(asn[i]) for i in range(n)],
        asn_seen=[None] * n,
        as_name=_as_names(asn_table, keys, valid),
        usual_ases=[None] * n,
        nearest_networks=[None] * n,
        closest_network=[None] * n,
        shared_prefix_bits=[None] * n,
        typical_low=low,
        typical_high=high,
        known_networks=[None] * n,
        usual_events=[None] * n,
        risk_factors=[None] * n,
    )
    todo = np.flatnonzero(rows >= 0)
    if profiles is not None and todo.size:
        _known_networks(ex, keys, rows, todo, profiles, asn, asn_table, ip_vectors, top)
    return ex


def explain_clients(
    ex: Explanations,
    agents: Sequence[str | None],
    devices: EventDevices,
    rows: np.ndarray,
    profiles: EntityProfiles | None,
) -> None:
    """Fill ``ex``'s client columns: ``device`` (:func:`device_words`) and ``agent_entities``, the training
    entities that used each row's user-agent string (how rare it is: a client only a few entities use forms
    a network case)."""
    ex.device[:] = device_words(agents, devices, rows, profiles)
    if profiles is not None:
        users = profiles.population.entities_of("agent", devices.agent).astype(np.int64).tolist()
        ex.agent_entities[:] = [u if a != 0 else None for u, a in zip(users, devices.agent.tolist(), strict=True)]


def device_words(
    agents: Sequence[str | None], devices: EventDevices, rows: np.ndarray, profiles: EntityProfiles | None
) -> list[str | None]:
    """Each row's client against its entity's in training, as an investigator reads it: "known device
    (Chrome on Windows, desktop; 140 logins in training)", "new device: curl on Other (other), user agent
    curl/8.1.2", or the device alone when the entity's training logins had no user agent; None without one."""
    from ipinsights.core.useragent import parse_user_agent
    from ipinsights.score.clients import NEW_DEVICE

    h = profiles.hist if profiles is not None else None
    lists = h is not None and profiles is not None and h.device_offsets.size == profiles.net_offsets.size
    out: list[str | None] = []
    for i, agent in enumerate(agents):
        if devices.device[i] == 0 or agent is None:
            out.append(None)
            continue
        family, os_family, kind = parse_user_agent(agent)
        name = f"{family} on {os_family}, {kind}"
        r = int(rows[i])
        if not lists or r < 0 or h is None:
            out.append(f"device {name}")
            continue
        s, e = int(h.device_offsets[r]), int(h.device_offsets[r + 1])
        if s == e:
            out.append(f"device {name} (no devices in training)")
            continue
        hit = np.flatnonzero(h.devices[s:e] == devices.device[i])
        if hit.size:
            out.append(f"known device ({name}; {int(h.device_counts[s + hit[0]])} logins in training)")
        else:  # a string that says little once parsed (a script, an app) is shown as it is
            raw = f", user agent {agent[:80]}" if "Other" in (family, os_family) or kind == "other" else ""
            out.append(f"{NEW_DEVICE}: {name}{raw}")
    return out


def _texts(keys: np.ndarray, valid: np.ndarray, v4: int, v6: int) -> list[str | None]:
    """The /``v4`` (IPv6: /``v6``) network of each address, as text; None for an invalid address."""
    text = key_prefix_text(np.where(valid, keys, 0), v4, v6)
    return [t if ok else None for t, ok in zip(text, valid.tolist(), strict=True)]


def _as_names(asn_table: AsnTable | None, keys: np.ndarray, valid: np.ndarray) -> list[str | None]:
    """Each address's AS as people know it; None for an invalid address or without an ASN table."""
    names: list[str | None] = asn_table.describe(keys) if asn_table is not None else [None] * keys.size
    return [name if valid[i] else None for i, name in enumerate(names)]


def _typical_range(
    profiles: EntityProfiles | None, rows: np.ndarray, n: int
) -> tuple[list[float | None], list[float | None]]:
    """The 5th and 95th percentiles of each row's entity's training anomaly scores; None where unknown."""
    lo, hi = profiles.typical_range(rows) if profiles is not None else (np.full(n, np.nan), np.full(n, np.nan))
    return _floats(lo), _floats(hi)


def _floats(values: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(x) else float(x) for x in values]


def _known_networks(
    ex: Explanations,
    keys: np.ndarray,
    rows: np.ndarray,
    todo: np.ndarray,
    prof: EntityProfiles,
    asn: np.ndarray | None,
    asn_table: AsnTable | None,
    ip_vectors: Callable[[np.ndarray], np.ndarray],
    top: int,
) -> None:
    """Fill ``ex``'s columns that compare the address with its entity's known networks, for the rows
    ``todo`` (those with a profile and a valid address; ``rows``: their profile rows)."""
    known = [prof.networks(int(rows[i]))[0] for i in todo]
    counts = [prof.networks(int(rows[i]))[1] for i in todo]
    # The addresses first, then every entity's known networks: one call of the model.
    vec = ip_vectors(np.concatenate([keys[todo], *known]).astype(np.int64))
    vec /= np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
    start = todo.size
    for j, i in enumerate(todo):
        k, c = known[j], counts[j]
        mine = vec[start : start + k.size]
        start += k.size
        ex.known_networks[i] = int(k.size)
        # How settled the entity is: its logins in its two most used networks (the cases' severity).
        ex.usual_events[i] = int(c[:2].sum())
        if not k.size:
            continue
        key = keys[i : i + 1]
        ex.subnet_seen[i] = bool((key_prefix(k, 24, 48) == key_prefix(key, 24, 48)[0]).any())
        ex.network_seen[i] = bool((key_prefix(k, 16, 32) == key_prefix(key, 16, 32)[0]).any())
        if asn is not None and asn_table is not None:
            usual = prof.entity_asns(int(rows[i]))
            ex.usual_ases[i] = "; ".join(asn_table.describe_asns(usual)) if usual.size else None
            if asn[i] >= 0:
                ex.asn_seen[i] = bool(asn[i] in set(usual.tolist()))
        ex.nearest_networks[i] = _nearest(k, c, mine @ vec[j], top)
        bits = _shared_bits(k, int(key[0]))
        b = int(np.argmax(bits))
        ex.closest_network[i] = key_prefix_text(k[b : b + 1], 24, 48)[0]
        ex.shared_prefix_bits[i] = int(bits[b])


def _nearest(known: np.ndarray, counts: np.ndarray, similarity: np.ndarray, top: int) -> list[dict[str, Any]]:
    """The ``top`` known networks most similar to the address (cosine ``similarity`` of each), most first;
    among networks equally similar at the precision shown, the one with more events first."""
    # Networks that share hash buckets and an AS are often alike to the last float bits, and those bits
    # differ between CPUs: ranking at the precision shown keeps the same explanation everywhere.
    shown = np.round(similarity.astype(np.float64), 4)
    order = np.lexsort((np.arange(shown.size), -counts.astype(np.int64), -shown))[:top]
    names = key_prefix_text(known[order], 24, 48)
    return [{"network": names[m], "similarity": float(shown[o]), "events": int(counts[o])} for m, o in enumerate(order)]


def _shared_bits(known: np.ndarray, key: int) -> np.ndarray:
    """Leading bits each known address key shares with ``key`` (0 across families)."""
    six = bool(is_ipv6_key(np.array([key]))[0])
    width = 64 if six else 32
    x = (known.astype(np.int64) ^ np.int64(key)).view(np.uint64)
    bits = np.array([width - int(v).bit_length() for v in x.tolist()])
    return np.where(is_ipv6_key(known) == six, np.maximum(bits, 0), 0)


#: How many of the features that raised a risk score most are worded (besides "new network").
RISK_FACTORS = 3


def risk_factors(
    fusion: FusionModel, features: dict[str, np.ndarray], valid: np.ndarray, population: PopulationPrior
) -> list[str | None]:
    """Each row's risk score in words: "new AS (/24) for this entity" in the new-network leaf, then the
    :data:`RISK_FACTORS` features that raised it most (positive contributions, largest first); None for an
    invalid row."""
    contrib = fusion.contributions(features)
    leaf = fusion.leaf_of(features)
    names = [n for n in contrib if n != fusion.gate]
    parts = np.column_stack([contrib[n] for n in names]) if names else np.zeros((valid.size, 0))
    new_network = "new AS for this entity" if fusion.gate == "as_seen" else "new /24 for this entity"
    out: list[str | None] = []
    for i in range(valid.size):
        if not valid[i]:
            out.append(None)
            continue
        words = [new_network] if leaf[i] >= 0 and fusion.leaves[leaf[i]].when == 0 else []
        for j in np.argsort(-parts[i], kind="stable")[:RISK_FACTORS]:
            if parts[i, j] > 1e-6:  # a numerical zero (a constant feature) says nothing
                words.append(_feature_words(names[j], features, i, population.entities))
        out.append("; ".join(words) or None)
    return out


def _feature_words(name: str, features: dict[str, np.ndarray], i: int, entities: int) -> str:
    """One feature's value for row ``i``, as an investigator reads it."""
    x = float(features[name][i])
    n = round(math.expm1(x))  # the counts and days are log1p

    def share(what: str) -> str:
        users = max(math.exp(x) * (entities + 1) - 1, 0.0)
        if users < 0.5:
            return f"{what} no entity used in training"
        return f"{what} used by {100 * users / max(entities, 1):.2g}% of entities"

    words = {
        "dot_product": "unlike the entity's usual networks (model)",
        "as_logins": f"{n} logins from this AS",
        "as_days": f"AS last used {n} days before",
        "subnet_logins": f"{n} logins from this /24",
        "subnet_days": f"/24 last used {n} days before",
        "network_logins": f"{n} logins from this /16" if n else "new /16 for this entity",
        "country_logins": f"{n} logins from this country" if n else "first login from this country",
        "entity_logins": f"entity with {n} training logins",
        "entity_networks": f"entity with {n} networks",
        "as_share": share("AS"),
        "subnet_share": share("/24"),
        "network_share": share("/16"),
        "device_new": "new device for this entity",
        "device_seen": "known device",
        "device_logins": f"{n} logins with this device",
        "device_days": f"device last used {n} days before",
        "agent_seen": "known user-agent string",
        "device_share": share("device"),
        "agent_share": share("user-agent string"),
        "device_missing": "no user agent",
        "hosting": "hosting range",
        "outside_table": "outside the ip2asn table",
        "reserved": "reserved address",
    }
    return words.get(name, name.replace("*", " with "))
