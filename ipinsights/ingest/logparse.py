"""Parse Apache/nginx Common and Combined Log Format lines into (entity, ip, ts, user agent) events.

The formats::

    common:   host ident authuser [dd/Mon/yyyy:HH:mm:ss +zzzz] "request" status bytes
    combined: common + ' "referer" "user-agent"'

Inside quoted fields Apache and nginx escape ``"`` and ``\\`` with a backslash (and non-printable
bytes as ``\\xhh``, which is why real logs are ASCII).

:func:`classify_batch` decides every line of an Arrow array at once, with Arrow's compute kernels
(RE2 regexes, splits) and numpy, and :func:`classify_lines` runs it in Spark's Python workers as one
Arrow UDF over the ``value`` column. Why not Spark SQL expressions: the JVM decodes every line to a
Java string and allocates per field, and a fresh JVM spent more CPU compiling the large generated
parser than parsing; here a batch of lines costs a few dozen vectorised kernel calls, about 2.5
CPU-us a line in all on the tutorial's log. The ingest job's ``arrow`` engine calls it directly on
the lines its Python tasks read (:mod:`ipinsights.ingest.job`).

Cost model per line (3M tutorial lines): the whole exact grammar is checked by one RE2 match without
captures (a DFA: about 0.4 us a line; with captures RE2 takes 10x longer), then the fields of the
usual line come from splitting on ``"`` and ``' '``. Only lines that need more (escapes, non-ASCII
bytes, tokens holding quotes, junk: well under 1% of a real log) go through Python's ``re`` with the
same grammar and capturing groups, one line at a time, and only lines that fail it are diagnosed
(:func:`_structure_reason`). Both paths yield the same fields, so the path a line takes never changes
its outcome; everything after the split (filters, timestamp, address, entity) is vectorised for all.

The user agent (the Combined format's last field; null for a Common-format line) is kept with each event,
with its browser family, OS family and device type (:mod:`ipinsights.core.useragent`). It costs no split
of its own: the text after the third quote (``referer" "agent"``) is dictionary-encoded, the agent cut
from its distinct values only, and only the distinct agents of the kept lines are parsed, through a bounded
cache that a task's batches share (about 0.3 us a line in all, on a log of 3,800 distinct agents). A line
whose agent is longer than ``max_user_agent_bytes`` is quarantined (``user_agent_too_long``); control
characters in an agent (which Apache and nginx escape, so only a broken writer leaves) are kept escaped as
``\\xhh``, so that the stored text never splits a report line.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ipinsights.core.config import ConfigError, check_int
from ipinsights.core.hashing import MAX_ENTITY_BYTES
from ipinsights.core.ip import parse_ipv4
from ipinsights.core.useragent import parse_user_agents
from ipinsights.storage.events import AGENT_FIELDS  # the events table's columns, re-exported

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

__all__ = [
    "AGENT_FIELDS",
    "ENTITY_FIELDS",
    "FILTERED",
    "KEPT",
    "OUTCOMES",
    "PATH_MATCH_MODES",
    "REASONS",
    "EntityOptions",
    "LineLimits",
    "LineRules",
    "ResourceFilter",
    "canonical_ip",
    "classify_batch",
    "classify_lines",
    "clf_timestamp",
    "quarantined",
]

#: Outcome of a line that became an event, and of a well-formed line for another resource.
KEPT = "kept"
FILTERED = "filtered"
#: Quarantine reasons, in the order they are tested (the first that applies is recorded).
REASONS = (
    "empty",  # blank line (nothing but spaces and tabs)
    "overlong",  # longer than max_line_length bytes (not parsed at all)
    "binary",  # invalid UTF-8 or control characters (in the head of the line; in the entity also tab, CR, LF, C1)
    "truncated",  # ends inside a quoted or bracketed field, or with a dangling backslash
    "field_count",  # not 7 (common) or 9 (combined) fields
    "malformed",  # right number of fields, wrong shape (e.g. status not 3 digits, request not quoted)
    "bad_timestamp",  # not dd/Mon/yyyy:HH:mm:ss +zzzz, or no such date/time
    "bad_ip",  # client address is not a valid IPv4 or IPv6 literal
    "missing_entity",  # the entity field is '-' or empty (e.g. no authenticated user)
    "entity_too_long",  # the entity is longer than max_entity_bytes (UTF-8)
    "user_agent_too_long",  # the user agent is longer than max_user_agent_bytes (UTF-8)
)
#: Every outcome, indexed by the codes :func:`classify_batch` computes with.
OUTCOMES = (KEPT, FILTERED, *REASONS)
_CODE = {name: np.int8(i) for i, name in enumerate(OUTCOMES)}
ENTITY_FIELDS = ("user", "ident", "user_agent", "referer", "query")
PATH_MATCH_MODES = ("exact", "prefix", "regex")

# The exact grammar, written once for both engines: RE2 (Arrow's regex kernels) and Python's re.
# Head tokens: no space, no control character, no U+FFFD (where invalid UTF-8 was decoded). The
# request: no control characters (servers escape them). Referer and agent: anything but an
# unescaped quote (control characters there are only refused when one of them is the entity).
_CTL = r"\x00-\x1f\x7f"
_TOK = "[^ " + _CTL + "\ufffd]+"
_QBODY = r'[^"\\' + _CTL + r"]*(?:\\[^" + _CTL + r'][^"\\' + _CTL + r"]*)*"
_TBODY = r'[^"\\]*(?:\\.[^"\\]*)*'
_GRAMMAR = (
    rf"(?P<client>{_TOK}) (?P<ident>{_TOK}) (?P<user>{_TOK}) \[(?P<time>[^\]{_CTL}]{{1,64}})\] "
    rf'"(?P<request>{_QBODY})" (?P<status>[0-9]{{3}}|-) (?P<bytes>[0-9]+|-)'
    rf'(?: "(?P<referer>{_TBODY})" "(?P<user_agent>{_TBODY})")?'
)
_GRAMMAR_RE2 = f"^(?:{_GRAMMAR})$"
_GRAMMAR_PY = re.compile(_GRAMMAR)  # used with fullmatch
# The usual line: a subset of the grammar whose fields come out of plain splits. No quote outside the
# quoted fields, one space in the time, a numeric status, no escapes in the request (nor in the
# referer and agent when one of them is the entity: the others are not split).
_FTOK = '[^ "' + _CTL + "]+"
_FAST_HEAD = (
    rf'^{_FTOK} {_FTOK} {_FTOK} \[[^\] "{_CTL}]{{1,31}} [^\] "{_CTL}]{{1,32}}\] "[^"\\{_CTL}]*" [0-9]{{3}} (?:[0-9]+|-)'
)
_FAST_RE2 = _FAST_HEAD + f'(?: "{_TBODY}" "{_TBODY}")?$'
_FAST_TAIL_RE2 = _FAST_HEAD + r'(?: "[^"\\]*" "[^"\\]*")?$'
# The agent in the text after the third quote, ``referer" "agent"`` (cut from the distinct ones with escapes).
_AGENT_OF_TAIL = re.compile(f'{_TBODY}" "({_TBODY})"')
_FIELDS = ("client", "ident", "user", "time", "request", "status", "referer", "user_agent")
_BINARY = "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]"  # binary, in a whole line (_structure_reason)
_BINARY_PY = re.compile(_BINARY)
# In an entity every control character is refused: tab, CR and LF too (a query parameter's %0A decodes to
# one) and C1 controls (U+0085 is a line break to many readers); reports and CSVs must not be split by them.
_ENTITY_BINARY = "[\x00-\x1f\x7f-\x9f\ufffd]"
# Control characters in a user agent, C1 included: stored as Apache writes them (\xhh), never raw.
_AGENT_CONTROL = "[\x00-\x1f\x7f-\x9f]"
_AGENT_CONTROL_PY = re.compile(_AGENT_CONTROL)
_UNESCAPE = re.compile(r"\\(.)")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}")
# Stands in for the rows a kernel must not see (non-ASCII, too long, already decided): a line of the
# usual shape, so that every split below yields its usual pieces.
_TEMPLATE = '0 - - [01/Jan/1970:00:00:00 +0000] "- - -" 000 0 "-" "-"'
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class ResourceFilter:
    """Which requests are the events to learn from (default: successful ``GET /login_success``).

    ``methods``/``statuses`` empty means any. ``path_match``: ``exact``, ``prefix`` or ``regex`` (an RE2
    regex that must match the whole path). The path is compared without its query string.
    """

    methods: tuple[str, ...] = ("GET",)
    path: str = "/login_success"
    path_match: str = "exact"
    statuses: tuple[int, ...] = (200,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(str(m).upper() for m in self.methods))
        object.__setattr__(self, "statuses", tuple(int(s) for s in self.statuses))
        for m in self.methods:
            if not re.fullmatch(r"[A-Z]+", m):
                raise ConfigError(f"methods: {m!r} is not an HTTP method")
        for st in self.statuses:
            if not 100 <= st <= 999:
                raise ConfigError(f"statuses: {st} is not an HTTP status (100-999)")
        if self.path_match not in PATH_MATCH_MODES:
            raise ConfigError(f"path_match={self.path_match!r} must be one of {', '.join(PATH_MATCH_MODES)}")
        if not self.path:
            raise ConfigError("path must not be empty (use path_match=regex and path=.* for any path)")
        if self.path_match == "regex":
            try:  # RE2 is what runs; refuse what it cannot compile now, not in the middle of a job
                pc.match_substring_regex(pa.array([""]), self.path_regex)
            except pa.ArrowInvalid as exc:
                raise ConfigError(f"path={self.path!r} is not a valid RE2 regex: {exc}") from None

    @property
    def path_regex(self) -> str:
        """The RE2 regex of ``path_match=regex``: whole-path match ('login' must not hit '/x/loginfo')."""
        return f"^(?:{self.path})$"


@dataclass(frozen=True)
class EntityOptions:
    """Where the entity comes from: ``user`` (authenticated user, default), ``ident``, ``user_agent``,
    ``referer``, or ``query`` (the URL query parameter ``query_param``, URL-decoded)."""

    field: str = "user"
    query_param: str = ""

    def __post_init__(self) -> None:
        if self.field not in ENTITY_FIELDS:
            raise ConfigError(f"entity field {self.field!r} must be one of {', '.join(ENTITY_FIELDS)}")
        if self.field == "query" and not self.query_param:
            raise ConfigError("entity field 'query' needs a query_param (the parameter's name)")


@dataclass(frozen=True)
class LineLimits:
    """Lines longer than ``max_line_length`` bytes are quarantined unparsed (as ``overlong``); a
    quarantined line keeps at most ``raw_max_chars`` characters; entities longer than ``max_entity_bytes``
    (UTF-8) are quarantined as ``entity_too_long``, and user agents longer than ``max_user_agent_bytes``
    as ``user_agent_too_long`` (real browsers' are 100-300 bytes, apps' and bots' rarely over 500)."""

    max_line_length: int = 8192
    raw_max_chars: int = 2048
    max_entity_bytes: int = MAX_ENTITY_BYTES
    max_user_agent_bytes: int = 1024

    def __post_init__(self) -> None:
        check_int("max_line_length", self.max_line_length, 64, 1 << 24)
        check_int("raw_max_chars", self.raw_max_chars, 16, 1 << 20)
        check_int("max_entity_bytes", self.max_entity_bytes, 1, 1 << 24)
        check_int("max_user_agent_bytes", self.max_user_agent_bytes, 16, 1 << 24)

    @property
    def read_cap(self) -> int:
        """Bytes of one line a reader keeps (:func:`~ipinsights.storage.logfiles.iter_split_lines`): enough to
        tell it is overlong and to keep its quarantined text, never a whole file without newlines."""
        return max(self.max_line_length, 4 * self.raw_max_chars) + 1


@dataclass(frozen=True)
class LineRules:
    """Everything the classifier is told: which lines become events, where the entity comes from, and
    the line limits.

    Each part checks its values when it is built (a bad one raises :class:`ConfigError`): the ingest
    job's config sections are these same classes (:class:`ipinsights.ingest.job.IngestConfig`).
    """

    resource: ResourceFilter = field(default_factory=ResourceFilter)
    entity: EntityOptions = field(default_factory=EntityOptions)
    limits: LineLimits = field(default_factory=LineLimits)


def quarantined(outcome: Column) -> Column:
    """True where an ``outcome`` column (Spark) of :func:`classify_lines` is a reason to quarantine the line."""
    return ~outcome.isin(KEPT, FILTERED)


# --------------------------------------------------------------------------- Arrow helpers


def _np(arr: pa.Array) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


def _mask(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.bool_())


def _as_string(values: pa.Array | pa.ChunkedArray) -> pa.StringArray:
    """``values`` as one ``string`` array, bytes untouched (casts between string types would validate
    UTF-8, and a log line may hold any bytes: invalid ones are a quarantine reason, not an error)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    t = values.type
    if pa.types.is_string(t):
        return values
    if pa.types.is_binary(t):
        return values.view(pa.string())
    if pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        return values.view(pa.large_binary()).cast(pa.binary()).view(pa.string())
    if pa.types.is_null(t):
        return pa.nulls(len(values), pa.string())
    return values.cast(pa.string())  # string_view and the like


class _Split:
    """``values`` split on ``sep``: ``piece(i)`` is each row's i-th piece (null where it has fewer).

    Each piece is one ``take`` from the split's flat values, so only the pieces asked for are copied.
    """

    def __init__(self, values: pa.Array, sep: str, max_splits: int | None = None):
        lists = pc.split_pattern(values, sep, max_splits=max_splits)
        offsets = _np(lists.offsets)
        self._flat, self._start, self.counts = lists.values, offsets[:-1], np.diff(offsets)

    def piece(self, i: int) -> pa.Array:
        has = self.counts > i
        return self._flat.take(pa.array(np.where(has, self._start + i, 0), pa.int64(), mask=~has))


# --------------------------------------------------------------------------- timestamps


def _clf_seconds(time: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(UTC epoch seconds, valid) of ``dd/Mon/yyyy:HH:mm:ss +zzzz`` texts, on their bytes with numpy."""
    t = _as_string(time)
    n = len(t)
    ok = _np(pc.fill_null(pc.equal(pc.binary_length(t), 26), False))
    t = pc.if_else(_mask(ok), t, "01/Jan/1970:00:00:00 +0000")  # now every row is 26 bytes
    offsets = np.frombuffer(t.buffers()[1], np.int32)[t.offset : t.offset + n]
    b = np.frombuffer(t.buffers()[2], np.uint8)[offsets[:, None] + np.arange(26)].astype(np.int64)
    digit_at = [0, 1, 7, 8, 9, 10, 12, 13, 15, 16, 18, 19, 22, 23, 24, 25]
    d = b[:, digit_at] - 48
    ok &= ((d >= 0) & (d <= 9)).all(axis=1)
    for pos, char in ((2, "/"), (6, "/"), (11, ":"), (14, ":"), (17, ":"), (20, " ")):
        ok &= b[:, pos] == ord(char)
    sign = np.where(b[:, 21] == ord("-"), -1, 1)
    ok &= (b[:, 21] == ord("+")) | (b[:, 21] == ord("-"))
    # Month names in any case, as Spark's pattern parser takes them ('|32' lower-cases an ASCII letter,
    # and only 'J' and 'j' lower-case to 'j').
    keys = [(ord(m[0]) << 16) | (ord(m[1]) << 8) | ord(m[2]) for m in (m.lower() for m in _MONTHS)]
    key = ((b[:, 3] | 32) << 16) | ((b[:, 4] | 32) << 8) | (b[:, 5] | 32)
    month = np.zeros(n, np.int64)
    for i, k in enumerate(keys, 1):
        month[key == k] = i
    ok &= month > 0
    day, year = d[:, 0] * 10 + d[:, 1], d[:, 2] * 1000 + d[:, 3] * 100 + d[:, 4] * 10 + d[:, 5]
    hh, mi, ss = d[:, 6] * 10 + d[:, 7], d[:, 8] * 10 + d[:, 9], d[:, 10] * 10 + d[:, 11]
    oh, om = d[:, 12] * 10 + d[:, 13], d[:, 14] * 10 + d[:, 15]
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    dim = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[month] + ((month == 2) & leap)
    # Years before 1970 only come from broken clocks; 24:00, leap seconds and offsets beyond +-18:00
    # (java.time's limit) are refused, like Spark's strict pattern parser does (tested).
    ok &= (year >= 1970) & (day >= 1) & (day <= dim) & (hh <= 23) & (mi <= 59) & (ss <= 59)
    ok &= (om <= 59) & (oh * 60 + om <= 18 * 60)
    # Days from the civil date (H. Hinnant's algorithm; years are >= 1970 here, so no negative eras).
    y = year - (month <= 2)
    era, yoe = y // 400, y % 400
    doy = (153 * np.where(month > 2, month - 3, month + 9) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    seconds = days * 86400 + hh * 3600 + mi * 60 + ss - sign * (oh * 3600 + om * 60)
    return np.where(ok, seconds, 0), ok


def clf_timestamp(time: pa.Array) -> pa.Int64Array:
    """``dd/Mon/yyyy:HH:mm:ss +zzzz`` -> UTC epoch seconds (null if malformed or no such date/time).

    Strict: 31/Feb, 24:00, a leap second, offsets beyond 18 hours and years before 1970 give null (a
    test compares it with Spark's pattern parser on the edge cases). Vectorised over the bytes: the
    text has a fixed width, so every field sits at a fixed offset.
    """
    seconds, ok = _clf_seconds(time)
    return pa.array(seconds, pa.int64(), mask=~ok)


# --------------------------------------------------------------------------- addresses and entities


@functools.lru_cache(maxsize=1 << 16)
def canonical_ip(text: str) -> str | None:
    """An IPv6 literal -> RFC 5952 text (``2001:db8::1``); IPv4-mapped -> the IPv4 address; None if invalid.

    Zone ids (``fe80::1%eth0``) are refused: they are no client address. Cached: the same few
    addresses repeat through a log.
    """
    if not _IPV6_CHARS.fullmatch(text):
        return None
    try:
        addr = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    mapped = addr.ipv4_mapped
    return str(mapped) if mapped is not None else addr.compressed


def _url_decode(value: str) -> str | None:
    """``+`` and ``%XX`` decoding, strict like Java's URLDecoder (a stray ``%`` gives None); bytes
    that are not UTF-8 become U+FFFD (and the entity check then quarantines them as binary)."""
    if "%" not in value and "+" not in value:
        return value
    if _BAD_PERCENT.search(value):
        return None
    return urllib.parse.unquote_to_bytes(value.replace("+", " ")).decode("utf-8", "replace")


def _apply(values: pa.Array, rows: np.ndarray, fn: Callable[[str], str | None]) -> pa.Array:
    """``values`` with ``fn`` applied in Python to the non-null strings at the ``rows`` mask."""
    if not rows.any():
        return values
    out = [fn(s) if s is not None else None for s in values.filter(_mask(rows)).to_pylist()]
    return pc.replace_with_mask(values, _mask(rows), pa.array(out, pa.string()))


# --------------------------------------------------------------------------- structure


def _scan_fields(text: str) -> tuple[bool, int]:
    """(truncated, number of fields) of a line that failed the grammar.

    Fields are quoted strings (a backslash escapes the next character), bracketed text, or runs of
    non-space characters. Truncated: the line ends inside a quoted or bracketed field, or its last
    token ends in a backslash (a field cut right after an escape). A plain scan, linear in the line.
    """
    i, n, count = 0, len(text), 0
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        count += 1
        if text[i] == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            if i >= n:
                return True, count
            i += 1
        elif text[i] == "[":
            close = text.find("]", i)
            if close < 0:
                return True, count
            i = close + 1
        else:
            start = i
            while i < n and not text[i].isspace():
                i += 1
            if i == n and text[start:].endswith("\\"):
                return True, count
    return False, count


def _structure_reason(raw: bytes, text: str, valid_utf8: bool, max_line_length: int) -> str:
    """Why a line failed the grammar (only ever run on those lines)."""
    if not text.strip(" \t"):
        return "empty"
    if len(raw) > max_line_length:
        return "overlong"
    if not valid_utf8 or _BINARY_PY.search(text):
        return "binary"
    truncated, n_fields = _scan_fields(text)
    if truncated:
        return "truncated"
    if n_fields not in (7, 9):
        return "field_count"
    return "malformed"


def _fast_fields(lines: pa.StringArray, rules: LineRules) -> tuple[np.ndarray, dict[str, pa.Array], pa.Array | None]:
    """(rows split here, their fields, their ``referer" "agent"`` tails) for the usual line; other rows hold
    junk to be replaced. Where the agent or referer is the entity, the fields hold both and there are no tails
    (the agent is cut from the tails' distinct values only, :func:`_agent_index`: cheaper than a split)."""
    ascii_ = pc.string_is_ascii(lines)
    ok = pc.fill_null(pc.and_(ascii_, pc.less_equal(pc.binary_length(lines), rules.limits.max_line_length)), False)
    v = pc.if_else(ok, lines, _TEMPLATE)  # the kernels below see ASCII only (RE2 and bad UTF-8: no)
    tail = rules.entity.field in ("referer", "user_agent")
    ok = _np(ok) & _np(pc.match_substring_regex(v, _FAST_TAIL_RE2 if tail else _FAST_RE2))
    v = pc.if_else(_mask(ok), v, _TEMPLATE)
    # By _FAST*, the quotes split the line into [head, request, " sss bbb ", referer, " ", agent, ""]
    # (a common-format line: the first 3), and the head "client ident user [time zone] " into 6 on spaces.
    q = _Split(v, '"', max_splits=None if tail else 3)
    head = _Split(q.piece(0), " ")
    fields = {"client": head.piece(0), "request": q.piece(1)}
    fields["time"] = pc.binary_join_element_wise(
        pc.utf8_slice_codeunits(head.piece(3), 1), pc.utf8_slice_codeunits(head.piece(4), 0, -1), " "
    )
    fields["status"] = pc.utf8_slice_codeunits(q.piece(2), 1, 4)
    for name, split, i in (("ident", head, 1), ("user", head, 2), ("referer", q, 3), ("user_agent", q, 5)):
        if name == rules.entity.field or (tail and name in ("referer", "user_agent")):
            fields[name] = split.piece(i)
    return ok, fields, None if tail else q.piece(3)


def _exact_fields(raw: list[bytes | None], rules: LineRules):
    """Python's re with the same grammar, one line at a time, for the rows the fast path left.

    Returns (parsed mask, per-field value lists, reason per unparsed line or None, the decoded text).
    """
    parsed, reasons, texts = [], [], []
    columns: dict[str, list] = {f: [] for f in _FIELDS}
    for b in raw:
        b = b or b""
        try:
            text, valid = b.decode("utf-8"), True
        except UnicodeDecodeError:
            text, valid = b.decode("utf-8", "replace"), False
        texts.append(text)
        m = _GRAMMAR_PY.fullmatch(text) if len(b) <= rules.limits.max_line_length else None
        parsed.append(m is not None)
        reasons.append(None if m else _structure_reason(b, text, valid, rules.limits.max_line_length))
        for f in _FIELDS:
            value = m.group(f) if m else None
            if value is not None and f in ("referer", "user_agent") and "\\" in value:
                value = _UNESCAPE.sub(r"\1", value)
            columns[f].append(value)
    return np.array(parsed, bool), columns, reasons, texts


# --------------------------------------------------------------------------- classification


def _selected(fields: dict[str, pa.Array], rules: LineRules) -> tuple[np.ndarray, _Split]:
    """(rows of the selected resource, their URL split into path and query) of parsed fields."""
    request = _Split(fields["request"], " ", max_splits=2)
    url = _Split(pc.fill_null(request.piece(1), ""), "?", max_splits=1)
    method, path = request.piece(0), url.piece(0)
    cond = pa.scalar(True)
    if rules.resource.methods:
        cond = pc.and_(cond, pc.is_in(method, value_set=pa.array(rules.resource.methods)))
    if rules.resource.path_match == "exact":
        cond = pc.and_(cond, pc.equal(path, rules.resource.path))
    elif rules.resource.path_match == "prefix":
        cond = pc.and_(cond, pc.starts_with(path, rules.resource.path))
    else:
        cond = pc.and_(cond, pc.match_substring_regex(path, rules.resource.path_regex))
    if rules.resource.statuses:
        cond = pc.and_(
            cond, pc.is_in(fields["status"], value_set=pa.array([f"{s:03d}" for s in rules.resource.statuses]))
        )
    return _np(pc.fill_null(cond, False)), url


def _entity(fields: dict[str, pa.Array], url: _Split, rules: LineRules) -> pa.Array:
    if rules.entity.field != "query":
        return fields[rules.entity.field]
    query = _Split(url.piece(1), "#", max_splits=1).piece(0)
    value = pc.struct_field(pc.extract_regex(query, f"(?:^|&){re.escape(rules.entity.query_param)}=(?P<v>[^&]*)"), "v")
    encoded = _np(pc.fill_null(pc.or_(pc.match_substring(value, "%"), pc.match_substring(value, "+")), False))
    return _apply(value, encoded, _url_decode)


def classify_batch(lines: pa.Array, rules: LineRules = LineRules()) -> pa.RecordBatch:
    """Decide the outcome of every line: an event, filtered out, or quarantined with a reason.

    Returns one row per line: ``outcome`` (:data:`KEPT`, :data:`FILTERED` or one of :data:`REASONS`);
    for kept lines ``entity``, ``ip`` (IPv4 dotted quad or RFC 5952 IPv6), ``ip_int`` (IPv4 only),
    ``ip_version``, ``epoch_s`` (UTC seconds), ``user_agent`` (null for a Common-format line) and its
    ``ua_family``, ``ua_os`` and ``ua_device`` (dictionary arrays, see :mod:`ipinsights.core.useragent`);
    for quarantined lines ``raw`` (the line cut to
    ``raw_max_chars`` characters, invalid UTF-8 replaced). Structural errors are quarantined whatever
    the resource; timestamp, address and entity are only checked on lines of the selected resource
    (a static asset has no user, and that is not an error).
    """
    lines = _as_string(lines)
    n = len(lines)
    fast, fields, tails = _fast_fields(lines, rules)
    slow = ~fast
    parsed = fast.copy()
    code = np.zeros(n, np.int8)
    raw_slow: list[str] = []
    slow_agents: list[str | None] = []
    if slow.any():
        raw = lines.view(pa.binary()).filter(_mask(slow)).to_pylist()
        ok, columns, reasons, texts = _exact_fields(raw, rules)
        parsed[slow] = ok
        code[np.flatnonzero(slow)[~ok]] = [_CODE[r] for r in reasons if r is not None]
        for f in fields:
            fields[f] = pc.replace_with_mask(fields[f], _mask(slow), pa.array(columns[f], pa.string()))
        raw_slow = [t[: rules.limits.raw_max_chars] for t in texts]
        slow_agents = columns["user_agent"]
    agents, agent_index = _agent_index(fields.get("user_agent"), tails, slow, slow_agents)
    sel, url = _selected(fields, rules)
    sel &= parsed
    code[parsed & ~sel] = _CODE[FILTERED]

    seconds, time_ok = _clf_seconds(fields["time"])
    bad = sel & ~time_ok
    code[bad] = _CODE["bad_timestamp"]
    todo = sel & time_ok

    client = fields["client"]
    v6 = todo & _np(pc.fill_null(pc.match_substring(client, ":"), False))
    ip = _apply(client, v6, canonical_ip)
    v4 = parse_ipv4(pc.fill_null(ip, ""))  # also the IPv4-mapped addresses, now in dotted form
    ip_ok = v4.valid | (v6 & _np(pc.is_valid(ip)))
    code[todo & ~ip_ok] = _CODE["bad_ip"]
    todo &= ip_ok

    entity = _entity(fields, url, rules)
    missing = _np(pc.is_null(entity)) | _np(pc.is_in(entity, value_set=pa.array(["-", ""])))
    code[todo & missing] = _CODE["missing_entity"]
    todo &= ~missing
    binary = _np(pc.fill_null(pc.match_substring_regex(pc.if_else(_mask(todo), entity, ""), _ENTITY_BINARY), False))
    code[todo & binary] = _CODE["binary"]
    todo &= ~binary
    too_long = _np(pc.fill_null(pc.greater(pc.binary_length(entity), rules.limits.max_entity_bytes), False))
    code[todo & too_long] = _CODE["entity_too_long"]
    todo &= ~too_long
    long_agent = np.append(_np(pc.binary_length(agents)) > rules.limits.max_user_agent_bytes, False)
    too_long = long_agent[agent_index]  # index -1 (no agent) reads the False appended
    code[todo & too_long] = _CODE["user_agent_too_long"]
    kept = todo & ~too_long  # code 0: kept
    agent, family, os_, device = _agent_columns(agents, np.where(kept, agent_index, -1))

    quarantine = ~kept & (code != _CODE[FILTERED])
    raw_text = pa.nulls(n, pa.string())
    if (quarantine & fast).any():  # ASCII lines: characters are bytes
        rows = quarantine & fast
        raw_text = pc.replace_with_mask(
            raw_text, _mask(rows), pc.utf8_slice_codeunits(lines.filter(_mask(rows)), 0, rules.limits.raw_max_chars)
        )
    if slow.any():
        raw_text = pc.replace_with_mask(raw_text, _mask(slow), pa.array(raw_slow, pa.string()))
    return pa.RecordBatch.from_arrays(
        [
            pc.take(pa.array(OUTCOMES), pa.array(code)),
            pc.if_else(_mask(kept), entity, pa.scalar(None, pa.string())),
            pc.if_else(_mask(kept), ip, pa.scalar(None, pa.string())),
            pa.array(v4.value.astype(np.int64), mask=~(kept & v4.valid)),
            pa.array(np.where(v4.valid, 4, 6).astype(np.int32), mask=~kept),
            pa.array(seconds, pa.int64(), mask=~kept),
            pc.if_else(_mask(quarantine), raw_text, pa.scalar(None, pa.string())),
            agent,
            family,
            os_,
            device,
        ],
        names=[*_RESULT_FIELDS.names],
    )


def _agent_index(
    agents: pa.Array | None, tails: pa.Array | None, slow: np.ndarray, slow_agents: list[str | None]
) -> tuple[pa.StringArray, np.ndarray]:
    """(distinct agents, each row's index among them or -1 where it has none) of a batch, from its ``agents``
    (the entity being the agent or referer), or from the fast rows' ``referer" "agent"`` ``tails`` and the
    ``slow`` rows' agents; only the distinct tails are cut."""
    source = agents if agents is not None else tails
    assert source is not None
    encoded = pc.dictionary_encode(source)
    values = encoded.dictionary
    if agents is None and len(values):  # referer" "agent" -> agent
        escaped = _np(pc.match_substring(values, "\\"))
        cut = pc.utf8_slice_codeunits(_Split(values, '" "', max_splits=1).piece(1), 0, -1)
        values = _apply(pc.if_else(_mask(escaped), values, cut), escaped, _agent_of_tail)
    index = _np(pc.fill_null(encoded.indices, -1)).astype(np.int64)
    if agents is None and slow.any():
        index[slow] = np.where([a is not None for a in slow_agents], len(values) + np.arange(slow.sum()), -1)
        values = pa.concat_arrays([values, pa.array(slow_agents, pa.string())])
    return values, index


def _agent_of_tail(tail: str) -> str | None:
    """The agent (unescaped) of a ``referer" "agent"`` text whose fields hold escapes."""
    m = _AGENT_OF_TAIL.fullmatch(tail)
    return _UNESCAPE.sub(r"\1", m.group(1)) if m else None


def _agent_columns(agents: pa.StringArray, index: np.ndarray) -> tuple[pa.DictionaryArray, ...]:
    """(user agent, family, OS, device type) of each row's ``agents[index]`` (null where ``index`` is -1), as
    dictionary arrays of the distinct strings used, each escaped and parsed once
    (:func:`~ipinsights.core.useragent.parse_user_agents`)."""
    used = np.flatnonzero(np.bincount(index[index >= 0], minlength=len(agents)))
    distinct = agents.take(pa.array(used))
    control = _np(pc.match_substring_regex(distinct, _AGENT_CONTROL))
    if control.any():  # rare: those strings escaped
        distinct = _apply(distinct, control, _escape_controls)
    again = pc.dictionary_encode(distinct)  # (two strings may have become one)
    position = np.zeros(max(len(agents), 1), np.int32)  # old index -> new (index -1 reads the last: masked)
    position[used] = _np(again.indices)
    new = position[index]
    encoded = pa.DictionaryArray.from_arrays(pa.array(new, pa.int32(), mask=index < 0), again.dictionary)
    return (encoded, *parse_user_agents(encoded))


def _escape_controls(text: str) -> str:
    return _AGENT_CONTROL_PY.sub(lambda m: "".join(f"\\x{b:02x}" for b in m.group().encode()), text)


#: What :func:`classify_batch` returns, per line (the Spark type is derived from it; the user agent's
#: columns come dictionary-encoded, as the ``arrow`` engine writes them, and go to Spark as strings).
_RESULT_FIELDS = pa.schema(
    [
        ("outcome", pa.string()),
        ("entity", pa.string()),
        ("ip", pa.string()),
        ("ip_int", pa.int64()),
        ("ip_version", pa.int32()),
        ("epoch_s", pa.int64()),
        ("raw", pa.string()),
        ("user_agent", pa.string()),
        ("ua_family", pa.string()),
        ("ua_os", pa.string()),
        ("ua_device", pa.string()),
    ]
)


def _as_struct(batch: pa.RecordBatch) -> pa.StructArray:
    """A :func:`classify_batch` result as one struct array of :data:`_RESULT_FIELDS` (dictionaries decoded)."""
    columns = [batch.column(f.name).cast(f.type) for f in _RESULT_FIELDS]
    return pa.StructArray.from_arrays(columns, fields=list(_RESULT_FIELDS))


def _arrow_classifier(rules: LineRules) -> Callable[[pa.Array], pa.Array]:
    """The per-batch function of :func:`classify_lines`' Arrow UDF (top level: pickled with its rules only)."""

    def classify(values: pa.Array) -> pa.Array:
        return _as_struct(classify_batch(values, rules))

    return classify


def _arrow_batches_classifier(
    rules: LineRules, carried: list[str]
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function of :func:`classify_lines` where Spark has no Arrow UDF (before 4.1): each
    batch's ``carried`` columns and the classification of its ``value`` as one struct column ``_r``."""

    def classify(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            result = _as_struct(classify_batch(batch.column("value"), rules))
            cols = [batch.column(name) for name in carried]
            yield pa.RecordBatch.from_arrays([*cols, result], names=[*carried, "_r"])

    return classify


def classify_lines(lines: DataFrame, rules: LineRules = LineRules()) -> DataFrame:
    """:func:`classify_batch` over a Spark DataFrame of ``value`` and ``source_file``, in the Python workers.

    Returns ``outcome``, ``source_file``, ``entity``, ``ip``, ``ip_int``, ``ip_version``, ``ts`` (UTC
    timestamp), ``dt`` (its UTC day), ``raw``, ``user_agent``, ``ua_family``, ``ua_os`` and ``ua_device``.
    Only ``value`` travels to Python (the file name stays in the JVM, attached to each result row).
    Any other column of ``lines`` is carried along unchanged.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_type

    extra = [c for c in lines.columns if c not in ("value", "source_file")]
    result = from_arrow_type(pa.struct(list(_RESULT_FIELDS)))
    if hasattr(F, "arrow_udf"):  # Spark 4.1+
        # The UDF's kind comes from the function's type hints (pa.Array -> pa.Array: scalar), the form pyspark
        # prefers (it warns when the kind is passed); its stubs only describe the form with the kind.
        udf = F.arrow_udf(_arrow_classifier(rules), result)  # type: ignore[call-overload]
        r = lines.select("source_file", *extra, udf(F.col("value")).alias("_r"))
    else:  # Spark 3.5 and 4.0: the same classifier over whole Arrow batches (the other columns ride along)
        from pyspark.sql.types import StructField, StructType

        carried = [f for f in lines.schema.fields if f.name != "value"]
        schema = StructType([*carried, StructField("_r", result)])
        r = lines.mapInArrow(_arrow_batches_classifier(rules, [f.name for f in carried]), schema)
    epoch = F.col("_r.epoch_s")
    return r.select(
        "_r.outcome",
        "source_file",
        "_r.entity",
        "_r.ip",
        "_r.ip_int",
        "_r.ip_version",
        F.timestamp_seconds(epoch).alias("ts"),
        # The UTC day from the epoch, not to_date(ts): to_date would use the session time zone.
        F.date_from_unix_date(F.floor(epoch / 86400).cast("int")).alias("dt"),
        "_r.raw",
        *(f"_r.{name}" for name in AGENT_FIELDS),
        *extra,
    )
