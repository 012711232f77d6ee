"""Investigator cases: a day's flagged events grouped, ranked by severity, capped by a daily budget.

Grouping (per UTC day, on Spark: :mod:`ipinsights.score.spark_cases`):

* a **network case** for every source (IPv4 /24, IPv6 /48) from which at least ``network_case_entities``
  distinct entities had flagged events that day: password spraying, credential stuffing, a shared
  attacker proxy. Its events belong to it and to no entity case;
* an **entity case** for every entity with flagged events left: its new networks (ASes when the scorer
  has an ASN table, else /24s and /48s), first and last time, event count, the highest-scoring event.

Severity (:func:`severity`), in decades of rarity (each point ~ ten times less likely on a normal day):

* ``score``: ``-log10(1 - p/100)`` with ``p`` the case's normal percentile (the highest event's for an
  entity case, the median event's for a network case), capped at 5 (above every calibration row):
  2 at the 1 % threshold, 3 at 99.9 %. A fixed threshold without calibration tables counts as 2;
* entity cases: ``+ settled`` (0-1, the share of the entity's training logins from its two most used
  networks: a sudden new network means more for someone with one ISP than for a traveller; an entity
  never seen in training gets none), ``+ 0.25 * log10(events)``, ``+ log10(new networks)`` and ``+ 1`` when
  the entity also logged in that day from places that were not flagged (``usual_today``): two people on
  one account, where a traveller's day comes from the trip's network alone, and ``+ 1`` when the
  highest event came from both a new network and a device the entity never used in training (a
  traveller keeps their own device; an attacker, unless very targeted, does not). The score term
  already weighs the device through ``risk_score``, but it is capped: among the cases above every
  calibration row this is what tells the trip from the takeover (``bench/cases_eval.py`` measures what
  each term does on the demo's world);
* network cases: ``+ 3 * log10(entities)`` (5 accounts: +2.1, 10: +3, 100: +6): one source into many
  accounts in a day is a campaign, not a traveller.

Budget: a case is ``open`` when its severity reaches the **case floor**, calibrated on normal traffic
(the calibration days, with the threshold in force) so that a normal day opens about
``normal_cases_per_day`` cases (half the default budget of 50: room for a noisier day). The report leads
with the top ``max_cases`` open cases; every case stays in the table. Case ids are a hash of the day, the
kind and the entity or source, so a rerun of a day gives its cases the same ids.

This module holds what needs no Spark: the ids, the severity, the summary in words, the finishing of a
batch of grouped cases and the stored case floor.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ipinsights.score.schemas import FINISHED_FIELDS

SEVERITY_VERSION = 2  # bump when the formula changes: stored case floors are then recalibrated
RARITY_FLOOR = 1e-5  # the score points' cap: 5 decades
MAX_MEMBERS = 1000  # entities listed per network case (``entities`` is the exact count)
MAX_NETWORKS = 20  # networks listed per case
ENTITY, NETWORK = "entity", "network"
#: A network case's source when it formed around a rare user-agent string, not a /24 (then ``UA <string>``).
AGENT_SOURCE = "UA "


@dataclass(frozen=True)
class CaseSettings:
    """How a day's flagged events become cases (``ScoreConfig`` carries them)."""

    max_cases: int = 50
    network_case_entities: int = 5
    case_events: int = 50  # events kept per case for the report's details (counts stay exact)
    floor: float | None = None  # the case floor (None: every case is open)


def case_id(day: str, kind: str, key: str) -> str:
    """Stable id of a case: ``E`` (entity) or ``N`` (network), its day, and 12 hex digits of
    sha256(day, kind, entity or source): ``E-20240109-3f9c2a7d01b4``. The day in the id lets a verdict
    find its case by reading one day of the table."""
    digest = hashlib.sha256(f"{day}\x1f{kind}\x1f{key}".encode()).hexdigest()[:12]
    return f"{'E' if kind == ENTITY else 'N'}-{day.replace('-', '')}-{digest}"


def day_of_case(case: str) -> str | None:
    """The day (``YYYY-MM-DD``) a case id names, None when it is not a case id."""
    parts = case.split("-")
    if len(parts) != 3 or parts[0] not in ("E", "N") or len(parts[1]) != 8 or not parts[1].isdigit():
        return None
    d = parts[1]
    return f"{d[:4]}-{d[4:6]}-{d[6:]}"


def score_points(percentile: np.ndarray) -> np.ndarray:
    """``-log10`` of the share of normal traffic scoring higher, capped at 5; 2 (the 1 % threshold) when unknown."""
    p = np.asarray(percentile, np.float64)
    rarity = np.clip(1.0 - p / 100.0, RARITY_FLOOR, 1.0)
    return np.where(np.isfinite(p), -np.log10(rarity), 2.0)


def severity(
    kind: np.ndarray,
    percentile: np.ndarray,
    events: np.ndarray,
    networks: np.ndarray,
    entities: np.ndarray,
    settled: np.ndarray,
    usual_today: np.ndarray | None = None,
    new_device: np.ndarray | None = None,
) -> np.ndarray:
    """The documented severity of cases (see the module docstring); arrays of one value per case
    (``new_device``: the top event is from a new network and a new device)."""
    pts = score_points(percentile)
    ev = np.maximum(np.asarray(events, np.float64), 1.0)
    nets = np.maximum(np.asarray(networks, np.float64), 1.0)
    ents = np.maximum(np.asarray(entities, np.float64), 1.0)
    settled = np.nan_to_num(np.clip(np.asarray(settled, np.float64), 0.0, 1.0))
    both = np.zeros(len(pts)) if usual_today is None else (np.nan_to_num(np.asarray(usual_today, np.float64)) > 0)
    stranger = np.zeros(len(pts)) if new_device is None else np.asarray(new_device, bool)
    entity_sev = pts + settled + 0.25 * np.log10(ev) + np.log10(nets) + both + stranger
    network_sev = pts + 3.0 * np.log10(ents)
    return np.round(np.where(np.asarray(kind) == NETWORK, network_sev, entity_sev), 6)


def _hhmm(t: dt.datetime | None) -> str:
    return "?" if t is None else t.astimezone(dt.timezone.utc).strftime("%H:%M")


def _percent(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "score above the threshold"
    if p >= 100.0:
        return "score above all normal traffic"
    # Rounded down, so 99.996 never reads as 100.
    return f"score above {math.floor(p * 100) / 100:g}% of normal"


def summary(case: Mapping[str, Any]) -> str:
    """The case in one line of words (what the report shows first)."""
    events, first, last = int(case["events"]), case["first_ts"], case["last_ts"]
    when = f"{events} event{'s' if events != 1 else ''} {_hhmm(first)}-{_hhmm(last)} UTC"
    names = [n for n in (case["network_names"] or []) if n]
    if case["kind"] == NETWORK and str(case["source"]).startswith(AGENT_SOURCE):
        n_nets = int(case["networks"])
        return (
            f"{int(case['entities'])} entities logged in with the rare user agent "
            f"{str(case['source']).removeprefix(AGENT_SOURCE)!r} from {n_nets} network{'s' if n_nets != 1 else ''} "
            f"({case['top_network'] or 'unknown AS'} first); {when}; median {_percent(case['score_percentile'])}"
        )
    if case["kind"] == NETWORK:
        return (
            f"{int(case['entities'])} entities logged in from {case['source']} "
            f"({case['top_network'] or 'unknown AS'}), "
            f"none of them ever from there; {when}; median {_percent(case['score_percentile'])}"
        )
    top = case["top_network"] or case["top_ip"]
    more = f" and {len(names) - 1} other network{'s' if len(names) > 2 else ''}" if len(names) > 1 else ""
    head = f"{'first login' if case['top_new'] else 'login'} from {top}{more}, {when}"
    n_train = case["training_count"]
    if not n_train:
        history = "entity never seen in training"
    else:
        usual = (case["usual_ases"] or "").split("; ")[0]
        known = case["known_networks"]
        parts = [
            f"usually {usual}" if usual else None,
            f"{known} network{'s' if known != 1 else ''}" if known else None,
            f"{int(n_train)} logins in training",
        ]
        history = ", ".join(p for p in parts if p)
    today = case.get("usual_today") or 0
    also = f"; also {today} login{'s' if today != 1 else ''} that day from places not flagged" if today else ""
    device = f"; {case['top_device']}" if case.get("top_device") else ""
    return f"{head}{device}; {history}{also}; {_percent(case['score_percentile'])}"


def _true(column: pa.Array) -> np.ndarray:
    """A boolean column as numpy, null as False."""
    return np.asarray(column.fill_null(False).to_numpy(zero_copy_only=False), bool)


def finish_batch(batch: pa.RecordBatch, floor: float | None) -> pa.RecordBatch:
    """Grouped cases plus ``case_id``, ``severity``, ``open`` and ``summary`` (one Python pass per case)."""
    n = batch.num_rows
    col = {name: batch.column(name) for name in batch.schema.names}
    kind = np.asarray(col["kind"].to_pylist(), dtype=object)
    training = np.asarray(col["training_count"].to_numpy(zero_copy_only=False), np.float64)
    usual = np.asarray(col["usual_events"].to_numpy(zero_copy_only=False), np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        settled = np.where(training > 0, usual / training, 0.0)
    sev = severity(
        kind,
        col["score_percentile"].to_numpy(zero_copy_only=False).astype(np.float64),
        col["events"].to_numpy(zero_copy_only=False),
        col["networks"].to_numpy(zero_copy_only=False),
        col["entities"].to_numpy(zero_copy_only=False),
        settled,
        col["usual_today"].to_numpy(zero_copy_only=False),
        _true(col["top_new"]) & _true(col["top_new_device"]),
    )
    # Only what the summary reads: the events' structs stay in Arrow.
    rows = batch.select(_SUMMARY_COLUMNS).to_pylist()
    days, entities, sources = col["dt"].to_pylist(), col["entity"].to_pylist(), col["source"].to_pylist()
    ids = [case_id(days[i], kind[i], entities[i] if kind[i] == ENTITY else sources[i]) for i in range(n)]
    opened = np.ones(n, bool) if floor is None else sev >= floor
    cols = [
        pa.array(ids, pa.string()),
        pa.array(sev, pa.float64()),
        pa.array(opened),
        pa.array([summary(r) for r in rows], pa.string()),
    ]
    # The table's order: the grouped columns, the new ones, then ``dt`` (Spark matches Arrow columns by position).
    keep = [name for name in batch.schema.names if name != "dt"]
    return pa.RecordBatch.from_arrays(
        [*(batch.column(name) for name in keep), *cols, batch.column("dt")], names=[*keep, *FINISHED_FIELDS.names, "dt"]
    )


_SUMMARY_COLUMNS = [
    "kind",
    "entities",
    "source",
    "events",
    "networks",
    "first_ts",
    "last_ts",
    "network_names",
    "top_network",
    "top_ip",
    "top_new",
    "top_device",
    "score_percentile",
    "training_count",
    "usual_ases",
    "known_networks",
    "usual_today",
]


@dataclass(frozen=True)
class CaseFloor:
    """A stored case floor (``<model>.cases.json``): valid for one model, threshold, budget and formula."""

    floor: float | None
    normal_cases_per_day: int
    threshold: float
    model_fingerprint: str
    source: str
    severity_version: int = SEVERITY_VERSION
    fusion_fingerprint: str | None = None  # the fusion whose risk scores the floor was calibrated on (None: none)

    def matches(self, fingerprint: str, threshold: float, per_day: int, fusion: str | None = None) -> bool:
        """Whether this floor holds for ``fingerprint``'s model, ``threshold``, ``per_day``, the ``fusion`` of
        that fingerprint (None: none) and this formula."""
        return (
            self.model_fingerprint == fingerprint
            and self.fusion_fingerprint == fusion
            and math.isclose(self.threshold, threshold, rel_tol=1e-9, abs_tol=1e-12)
            and self.normal_cases_per_day == per_day
            and self.severity_version == SEVERITY_VERSION
        )

    def to_json(self) -> str:
        """The file's text."""
        return json.dumps({"format": "ipinsights-case-floor", **asdict(self)}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CaseFloor:
        """The floor stored in ``text``; ``ValueError`` when it is not a case floor file of this version."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.pop("format", None) != "ipinsights-case-floor":
            raise ValueError("not an ipinsights case floor file")
        try:
            return cls(**data)
        except TypeError as exc:  # fields of another version
            raise ValueError(f"malformed case floor ({exc})") from None
