"""SageMaker IP Insights inference protocol: request parsing and response formatting, framework-free.

Inputs (``Content-Type``), as SageMaker documents them:

- ``text/csv``: headerless rows ``entity,ip`` (RFC 4180 quoting allowed; blank lines skipped);
- ``application/json``: ``{"instances": [{"data": {"features": {"values": ["user1", "1.2.3.4"]}}},
  {"features": ["user2", "5.6.7.8"]}]}`` (either instance form, mixed freely);
- ``application/jsonlines``: one such instance per line (lines end at ``\n`` only: JSON strings may hold
  U+2028 or U+0085, which Python's ``str.splitlines`` would also split on).

A UTF-8 byte order mark at the start of a body is ignored (spreadsheet exports write one). Entities longer than
``max_entity_bytes`` (UTF-8) are refused naming the record: hashing one costs time linear in its length.

Outputs (``Accept``, default ``application/json``): ``{"predictions": [{"dot_product": 1.23}, ...]}`` or
``application/jsonlines`` (one ``{"dot_product": 1.23}`` per line). ``verbose=True`` as an Accept
parameter adds ``entity_embedding`` and ``ip_embedding``. Beyond SageMaker: ``anomaly`` adds the batch
job's verdict (``anomaly_score`` of the record's ``rule``, ``unseen_entity``; ``entity_percentile``,
``level`` and ``flagged`` when the profile and calibration are known); ``risk`` adds ``risk_score``, the
fused risk score (:mod:`ipinsights.score.fusion`; null when the model has no fusion beside it; the
``anomaly`` and ``verbose`` answers carry it too when there is one). The flags can also be given as query
parameters (``?anomaly=true&verbose=true&risk=true``) or in SageMaker's ``X-Amzn-SageMaker-Custom-Attributes``
header (``anomaly=true``), which ``invoke_endpoint(CustomAttributes=...)`` forwards to the container.

Every problem raises :class:`RequestError` with an HTTP status and a reason naming the record.
Nothing here imports torch or a web framework, so it is cheap to test and fuzz.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ipinsights.core.hashing import MAX_ENTITY_BYTES

__all__ = [
    "CSV",
    "JSON",
    "JSONLINES",
    "INPUT_TYPES",
    "OUTPUT_TYPES",
    "Options",
    "Records",
    "RequestError",
    "build_predictions",
    "error_body",
    "format_predictions",
    "invalid_ip_error",
    "negotiate_output",
    "parse_flags",
    "parse_media_type",
    "parse_records",
    "read_content_type",
]

CSV = "text/csv"
JSON = "application/json"
JSONLINES = "application/jsonlines"
INPUT_TYPES = (CSV, JSON, JSONLINES)
OUTPUT_TYPES = (JSON, JSONLINES)
_UTF8_CHARSETS = {"utf-8", "utf8", "us-ascii", "ascii"}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_FLAGS = ("verbose", "anomaly", "risk")
_SHOWN_ERRORS = 3  # how many bad records an error message names
# One compact encoder for every response: json.dumps(separators=...) builds a new encoder per call (~0.1 ms).
# Strict JSON: NaN and Infinity are not JSON and strict parsers reject the whole body, so every float that
# can be undefined goes out as null (_finite); a stray one is a server error, never an invalid body.
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _finite(values: list[float]) -> list[float | None]:
    """``values`` with NaN and infinities as None (JSON null)."""
    return [v if math.isfinite(v) else None for v in values]


class RequestError(Exception):
    """A request the server refuses: ``status`` is the HTTP status, ``reason`` says why (names the record)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Options:
    """What the client asked for: the response media type and the optional per-record fields."""

    media_type: str = JSON
    verbose: bool = False
    anomaly: bool = False
    risk: bool = False  # add risk_score (the fused score; SageMaker's default answer is dot_product alone)


@dataclass(frozen=True)
class Records:
    """Parsed (entity, ip[, user agent]) records; ``lines`` holds each record's line number (None: a JSON
    ``instances`` list); ``agents`` each record's user agent (None for a record without one; the list is None
    when no record has one)."""

    entities: list[str]
    ips: list[str]
    lines: list[int] | None = None
    agents: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.entities)

    def where(self, i: int) -> str:
        """Record ``i`` (0-based) as error messages name it: ``record 3 (line 4)`` or ``record 3 (instances[2])``."""
        return f"record {i + 1} " + (f"(line {self.lines[i]})" if self.lines is not None else f"(instances[{i}])")


# ---------------------------------------------------------------------------------------------
# Header parsing and content negotiation
# ---------------------------------------------------------------------------------------------


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``'Text/CSV; charset="utf-8"'`` -> ``('text/csv', {'charset': 'utf-8'})``; never raises."""
    kind, *params = value.split(";")
    out: dict[str, str] = {}
    for p in params:
        name, sep, val = p.partition("=")
        if sep:
            out[name.strip().lower()] = val.strip().strip('"')
    return kind.strip().lower(), out


def read_content_type(header: str | None) -> str:
    """The input media type of a request, or 415 naming what is supported."""
    supported = ", ".join(INPUT_TYPES)
    if not header or not header.strip():
        raise RequestError(415, f"missing Content-Type; send one of {supported}")
    kind, params = parse_media_type(header)
    if kind == "application/x-jsonlines":  # the older spelling some SageMaker tools send
        kind = JSONLINES
    if kind not in INPUT_TYPES:
        raise RequestError(415, f"unsupported Content-Type {header.strip()[:100]!r}; send one of {supported}")
    charset = params.get("charset", "utf-8").lower()
    if charset not in _UTF8_CHARSETS:
        raise RequestError(415, f"unsupported charset {charset[:40]!r}; send UTF-8")
    return kind


def _truthy(name: str, value: str, where: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise RequestError(400, f"{where}: {name}={value[:40]!r} must be true or false")


def negotiate_output(accept: str | None) -> tuple[str, bool]:
    """Pick the response type from an Accept header: ``(media_type, verbose)``, or 406.

    Honours q-values (ties go to the first listed); ``*/*`` and ``application/*`` get JSON, the default.
    """
    if accept is None or not accept.strip():
        return JSON, False
    best: tuple[float, int, str, dict[str, str]] | None = None
    for pos, entry in enumerate(accept.split(",")):
        kind, params = parse_media_type(entry)
        if kind == "application/x-jsonlines":
            kind = JSONLINES
        elif kind in ("*/*", "application/*"):
            kind = JSON
        if kind not in OUTPUT_TYPES:
            continue
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0  # a malformed weight does not get to win
        if not 0.0 < q <= 1.0:
            continue
        if best is None or q > best[0]:
            best = (q, pos, kind, params)
    if best is None:
        raise RequestError(406, f"cannot answer Accept {accept.strip()[:100]!r}; accepted: {', '.join(OUTPUT_TYPES)}")
    _, _, kind, params = best
    verbose = _truthy("verbose", params["verbose"], "Accept") if "verbose" in params else False
    return kind, verbose


def parse_flags(query: Mapping[str, str], custom_attributes: str | None) -> dict[str, bool]:
    """``verbose``/``anomaly``/``risk`` from query parameters and SageMaker custom attributes (``a=1,b=2`` or ``;``)."""
    flags: dict[str, bool] = {}
    for name in _FLAGS:
        if name in query:
            flags[name] = _truthy(name, query[name], "query")
    for item in (custom_attributes or "").replace(";", ",").split(","):
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if sep and name in _FLAGS:  # other attributes belong to other tools: ignore them
            flags[name] = flags.get(name, False) or _truthy(name, value, "X-Amzn-SageMaker-Custom-Attributes")
    return flags


# ---------------------------------------------------------------------------------------------
# Bodies
# ---------------------------------------------------------------------------------------------


def _decode(body: bytes) -> str:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"body is not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
    return text.removeprefix("\ufeff")  # a byte order mark is no part of the first record


def _too_many(max_records: int) -> RequestError:
    return RequestError(413, f"more than {max_records} records in one request; split it into smaller ones")


def _agents(agents: list[str | None]) -> list[str | None] | None:
    """The records' user agents, or None when no record has one (the answer is then as before it)."""
    return agents if any(a is not None for a in agents) else None


def _parse_csv(text: str, max_records: int) -> Records:
    entities: list[str] = []
    ips: list[str] = []
    agents: list[str | None] = []
    lines: list[int] = []
    # newline="" keeps quoted newlines inside fields, as the csv module requires.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        for row in reader:
            if not row:
                continue  # a blank line, e.g. the one after the last newline
            n = len(entities) + 1
            if len(row) not in (2, 3):
                raise RequestError(
                    400,
                    f"record {n} (line {reader.line_num}): expected 2 or 3 columns (entity,ip[,user_agent]), "
                    f"got {len(row)}",
                )
            if n > max_records:
                raise _too_many(max_records)
            entities.append(row[0])
            ips.append(row[1])
            agents.append(row[2] if len(row) == 3 and row[2] else None)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise RequestError(400, f"malformed CSV at line {reader.line_num}: {exc}") from None
    return Records(entities, ips, lines, _agents(agents))


def _instance_values(inst: Any, where: str) -> tuple[str, str, str | None]:
    """The (entity, ip, user agent or None) of one JSON instance in either documented form."""
    if not isinstance(inst, dict):
        raise RequestError(400, f"{where}: an instance must be an object, got {type(inst).__name__}")
    if "features" in inst:
        values = inst["features"]
    elif isinstance(inst.get("data"), dict) and isinstance(inst["data"].get("features"), dict):
        values = inst["data"]["features"].get("values")
    else:
        raise RequestError(
            400,
            f'{where}: expected {{"features": [entity, ip]}} or {{"data": {{"features": {{"values": [entity, ip]}}}}}}',
        )
    if not isinstance(values, list) or len(values) not in (2, 3):
        got = f"{len(values)} values" if isinstance(values, list) else type(values).__name__
        raise RequestError(400, f"{where}: expected 2 or 3 values [entity, ip, user_agent], got {got}")
    entity, ip, agent = (*values, None) if len(values) == 2 else values
    if agent is not None and not isinstance(agent, str):
        raise RequestError(400, f"{where}: the user agent must be a string or null, got {type(agent).__name__}")
    # Numeric user ids are common in JSON; they mean what the same digits mean in CSV.
    if isinstance(entity, int) and not isinstance(entity, bool):
        entity = str(entity)
    if not isinstance(entity, str):
        raise RequestError(400, f"{where}: the entity must be a string, got {type(entity).__name__}")
    if not isinstance(ip, str):
        raise RequestError(400, f"{where}: the IP address must be a string, got {type(ip).__name__} {ip!r:.60}")
    for name, value in (("entity", entity), ("IP address", ip), ("user agent", agent or "")):
        try:  # JSON can spell lone surrogates (\\ud800) that no UTF-8 string holds
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(400, f"{where}: the {name} is not valid Unicode (a lone surrogate)") from None
    return entity, ip, agent or None


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"malformed JSON{where}: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # e.g. integers past Python's digit limit, absurd nesting
        raise RequestError(400, f"malformed JSON{where}: {str(exc)[:100] or type(exc).__name__}") from None


def _parse_json(text: str, max_records: int) -> Records:
    doc = _loads(text, "")
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise RequestError(400, 'expected a JSON object {"instances": [...]}')
    instances = doc["instances"]
    if len(instances) > max_records:
        raise _too_many(max_records)
    rows = [_instance_values(inst, f"record {i + 1} (instances[{i}])") for i, inst in enumerate(instances)]
    return Records([r[0] for r in rows], [r[1] for r in rows], None, _agents([r[2] for r in rows]))


def _parse_jsonlines(text: str, max_records: int) -> Records:
    entities: list[str] = []
    ips: list[str] = []
    agents: list[str | None] = []
    lines: list[int] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip(" \t\r"):  # JSON's whitespace; a line of other spaces is malformed JSON
            continue
        n = len(entities) + 1
        if n > max_records:
            raise _too_many(max_records)
        where = f"record {n} (line {lineno})"
        entity, ip, agent = _instance_values(_loads(line, f" in {where}"), where)
        entities.append(entity)
        ips.append(ip)
        agents.append(agent)
        lines.append(lineno)
    return Records(entities, ips, lines, _agents(agents))


_PARSERS = {CSV: _parse_csv, JSON: _parse_json, JSONLINES: _parse_jsonlines}


def parse_records(
    body: bytes, content_type: str, max_records: int, max_entity_bytes: int = MAX_ENTITY_BYTES
) -> Records:
    """Parse a request body of a supported ``content_type`` (see :func:`read_content_type`) into records.

    400 naming the first records whose entity is longer than ``max_entity_bytes`` (UTF-8).
    """
    if not body:
        raise RequestError(400, "empty request body; send at least one entity,ip record")
    records = _PARSERS[content_type](_decode(body), max_records)
    if not len(records):
        raise RequestError(400, "no records in the request body")
    # A character is 1 to 4 UTF-8 bytes: only entities in between need encoding to be measured.
    long = [
        i
        for i, e in enumerate(records.entities)
        if len(e) > max_entity_bytes or (4 * len(e) > max_entity_bytes and len(e.encode()) > max_entity_bytes)
    ]
    if long:
        shown = "; ".join(
            f"{records.where(i)}: the entity is {len(records.entities[i].encode())} bytes" for i in long[:_SHOWN_ERRORS]
        )
        more = f" ({len(long)} too long in all)" if len(long) > _SHOWN_ERRORS else ""
        raise RequestError(400, f"{shown}{more}; entities are at most {max_entity_bytes} bytes (UTF-8)")
    return records


def invalid_ip_error(records: Records, rows: Sequence[int]) -> RequestError:
    """400 naming the first records whose IP address did not parse."""
    shown = "; ".join(
        f"{records.where(int(r))}: invalid IP address {records.ips[int(r)][:60]!r}" for r in rows[:_SHOWN_ERRORS]
    )
    more = f" ({len(rows)} invalid in all)" if len(rows) > _SHOWN_ERRORS else ""
    return RequestError(400, f"{shown}{more}; expected IPv4 like 192.0.2.1 or IPv6 like 2001:db8::1")


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------


def build_predictions(
    dot_product: np.ndarray,
    *,
    verdict: Any = None,
    entity_embedding: np.ndarray | None = None,
    ip_embedding: np.ndarray | None = None,
    explanation: dict[str, list] | None = None,
    risk_score: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One dict per record in SageMaker's field names, plus the verdict and explanation when asked.

    ``verdict`` (a :class:`~ipinsights.score.scorer.Assessment`) adds ``anomaly_score`` (from the record's
    rule), ``rule``, ``unseen_entity`` (when the model knows), ``entity_percentile``, ``level`` and
    ``flagged`` (when known); ``explanation`` (the ``columns()`` of ``Scorer.explain``'s
    :class:`~ipinsights.score.explain.Explanations`) one ``explanation`` object per record; ``risk_score``
    (an array: null entries where NaN) one ``risk_score`` per record.
    """
    dp = _finite(dot_product.tolist())
    preds: list[dict[str, Any]] = [{"dot_product": v} for v in dp]
    if risk_score is not None:
        for p, r in zip(preds, _finite(np.asarray(risk_score, np.float64).tolist()), strict=True):
            p["risk_score"] = r
    if verdict is not None:
        unseen = verdict.unseen_entity
        pct = verdict.entity_percentile.tolist()
        for i, (p, a, r) in enumerate(
            zip(preds, _finite(verdict.anomaly_score.tolist()), verdict.rule.tolist(), strict=True)
        ):
            p["anomaly_score"] = a
            p["rule"] = r
            if unseen is not None:  # models without entity stats cannot tell
                p["unseen_entity"] = bool(unseen[i])
            if pct[i] == pct[i]:  # not NaN: the entity has a profile
                p["entity_percentile"] = round(pct[i], 2)
            if verdict.level is not None:
                p["level"] = verdict.level[i]
            if verdict.flagged is not None:
                p["flagged"] = bool(verdict.flagged[i])
    if entity_embedding is not None and ip_embedding is not None:
        for p, e, v in zip(preds, entity_embedding.tolist(), ip_embedding.tolist(), strict=True):
            p["entity_embedding"] = _finite(e)
            p["ip_embedding"] = _finite(v)
    if explanation is not None:
        for i, p in enumerate(preds):
            p["explanation"] = {k: v[i] for k, v in explanation.items()}
    return preds


def format_predictions(predictions: Iterable[dict[str, Any]], media_type: str) -> bytes:
    """Serialise predictions as ``{"predictions": [...]}`` (JSON) or one object per line (JSON lines)."""
    if media_type == JSONLINES:
        return "".join(_ENCODE(p) + "\n" for p in predictions).encode()
    return _ENCODE({"predictions": list(predictions)}).encode()


def error_body(reason: str) -> bytes:
    """The JSON body of an error response."""
    return json.dumps({"error": reason}).encode()
