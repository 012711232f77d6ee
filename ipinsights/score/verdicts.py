"""Investigators' verdicts on cases: read, checked, and turned into the (entity, network) rules scoring applies.

The verdicts file is a CSV with a header that investigators edit (a spreadsheet or a ticket export)::

    case_id,entity,network,verdict,who,when,expires,note
    E-20240109-3f9c2a7d01b4,,,benign,ana,2024-01-10T09:12:00Z,2024-04-10,moved to a new ISP
    ,alice,AS64512,benign,ana,2024-01-10,,
    ,*,203.0.113.0/24,benign,bo,2024-01-10,,corporate VPN egress
    ,mallory,,malicious,ana,2024-01-10,,account taken over (ticket 4711)

* A row names a case (``case_id``, as the report shows it) or an ``entity`` and a ``network``. ``entity``
  ``*`` means every entity (a source that is fine for all: a VPN egress). ``network`` is an AS
  (``AS64512``), a /24 or /16 (IPv6: /48 or /32, written as the cases write them) or one address.
* ``verdict`` is ``benign`` or ``malicious``; ``who`` and ``when`` (ISO date or time, UTC) are required;
  ``expires`` (ISO date, exclusive) is optional.
* A **benign** verdict suppresses the matching flagged events from the cases of every day from
  ``when`` (and, for a case id, from the day after the case) until ``expires``: they are counted as
  suppressed in the report, not shown. A case id stands for the networks of that case's events (for a
  network case: its source, for every entity).
* A **malicious** verdict marks its entity (or source): the report lists the entity whenever it logs in
  again, and its cases carry ``prior_verdict = malicious``. It never expires unless told to.

A row that cannot be read is left out with a warning naming ``file:line`` and the field, and the report
shows how many were left out: one bad row never stops the day's scoring or voids the other verdicts.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import ipaddress
import logging
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from ipinsights.storage.files import read_text

log = logging.getLogger(__name__)

__all__ = ["ANY_ENTITY", "COLUMNS", "Rule", "VERDICTS", "Verdict", "VerdictSet", "network_key", "read_verdicts"]

COLUMNS = ("case_id", "entity", "network", "verdict", "who", "when", "expires", "note")
VERDICTS = ("benign", "malicious")
ANY_ENTITY = "*"
_AS_RE = re.compile(r"^AS(\d{1,10})$", re.IGNORECASE)
#: The prefix lengths a network may have: the cases' /24 and /16 (IPv6 /48 and /32), or one address.
_PREFIXES = {4: (24, 16, 32), 6: (48, 32, 128)}
_FAR_FUTURE = "9999-12-31"


@dataclass(frozen=True)
class Verdict:
    """One row of the verdicts file, checked (``network`` in its canonical form, see :func:`network_key`)."""

    verdict: str
    who: str
    when: dt.date
    case_id: str | None = None
    entity: str | None = None
    network: str | None = None
    expires: dt.date | None = None
    note: str = ""
    where: str = ""  # file:line, for messages


@dataclass(frozen=True)
class VerdictSet:
    """The usable verdicts of a file and the messages of the rows that were left out."""

    verdicts: tuple[Verdict, ...] = ()
    rejected: tuple[str, ...] = field(default=())

    def by_case(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if v.case_id)


def network_key(text: str) -> str:
    """The canonical key of a verdict's network: ``AS64512``, ``10.1.2.0/24``, ``2001:db8::/48``, ``10.1.2.3``.

    Raises ``ValueError`` for anything else: a prefix length the cases do not use would match nothing.
    """
    text = text.strip()
    m = _AS_RE.match(text)
    if m:
        return f"AS{int(m.group(1))}"
    try:
        if "/" not in text:
            return ipaddress.ip_address(text).compressed
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an AS (AS64512), a network (10.1.2.0/24) or an address") from None
    if net.prefixlen not in _PREFIXES[net.version]:
        lengths = "/24 or /16" if net.version == 4 else "/48 or /32"
        raise ValueError(f"{text!r}: a network is a {lengths} (as the cases show it), an AS or one address")
    if net.num_addresses == 1:
        return net.network_address.compressed
    return net.compressed


def _date(text: str, name: str) -> dt.date:
    text = text.strip()
    try:
        if len(text) == 10:
            return dt.date.fromisoformat(text)
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.timezone.utc).date()
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an ISO date or time (2024-01-10, 2024-01-10T09:12:00Z)") from None


def _row(row: dict[str, str | None], where: str) -> Verdict:
    """One checked row; ``ValueError`` naming the field otherwise."""
    get = {k: (row.get(k) or "").strip() for k in COLUMNS}
    verdict = get["verdict"].lower()
    if verdict not in VERDICTS:
        raise ValueError(f"verdict={get['verdict']!r} must be one of {', '.join(VERDICTS)}")
    if not get["who"]:
        raise ValueError("who is empty: every verdict names the investigator")
    if not get["when"]:
        raise ValueError("when is empty")
    when = _date(get["when"], "when")
    expires = _date(get["expires"], "expires") if get["expires"] else None
    if expires is not None and expires <= when:
        raise ValueError(f"expires={expires} is not after when={when}")
    case_id = get["case_id"] or None
    entity, network = get["entity"] or None, get["network"] or None
    if case_id is None:
        if entity is None:
            raise ValueError("neither case_id nor entity is set")
        if network is None and verdict == "benign":
            raise ValueError("a benign verdict without case_id needs a network (benign for everything is no verdict)")
        if entity == ANY_ENTITY and network is None:
            raise ValueError("entity '*' needs a network")
    key = network_key(network) if network is not None else None
    return Verdict(verdict, get["who"], when, case_id, entity, key, expires, get["note"], where)


def read_verdicts(uri: str) -> VerdictSet:
    """The verdicts of ``uri`` (a path or URI). A missing file is an error (``FileNotFoundError``): a
    configured verdicts file that vanished must not silently un-suppress everything; bad rows are
    left out, each with a warning naming ``file:line`` and the field."""
    text = read_text(uri)
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("verdict", "who", "when") if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{uri}: no {', '.join(missing)} column in its header (columns: {', '.join(COLUMNS)})")
    good: list[Verdict] = []
    bad: list[str] = []
    for row in reader:
        where = f"{uri}:{reader.line_num}"
        try:
            good.append(_row(row, where))
        except ValueError as exc:
            bad.append(f"{where}: {exc}")
            log.warning("verdict left out: %s: %s", where, exc)
    return VerdictSet(tuple(good), tuple(bad))


#: A matching rule: (verdict, entity or '*', network key or '' for any, first day, end day).
class Rule(NamedTuple):
    """A matching rule: ``verdict`` applies to ``entity`` (or ``*``) on ``network`` (a network key, or ``""``
    for every network) on the days ``first <= day < end`` (ISO strings)."""

    verdict: str
    entity: str
    network: str
    first: str
    end: str


def rules(verdicts: VerdictSet, cases: dict[str, tuple[str, str | None, list[str]]]) -> list[Rule]:
    """The matching :class:`Rule` s of ``verdicts``.

    ``cases`` resolves case ids: ``{case_id: (day, entity or None for a network case, network keys)}``.
    A case id that is not there is left out with a warning (its case may have been purged). Days are
    ISO strings; a rule applies to days ``first <= day < end``.
    """
    out = []
    for v in verdicts.verdicts:
        first = v.when.isoformat()
        end = v.expires.isoformat() if v.expires else _FAR_FUTURE
        if v.case_id is None:
            assert v.entity is not None
            out.append(Rule(v.verdict, v.entity, v.network or "", first, end))
            continue
        case = cases.get(v.case_id)
        if case is None:
            log.warning("%s: case %s is not in the cases table: verdict left out", v.where, v.case_id)
            continue
        day, entity, keys = case
        after = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
        who = v.entity or entity or ANY_ENTITY
        for key in [v.network] if v.network else keys:
            out.append(Rule(v.verdict, who, key or "", max(first, after), end))
    return out
