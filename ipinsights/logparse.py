"""Parse Apache/nginx Common and Combined Log Format lines into (entity, ip, ts) events, in the JVM.

Everything here is a pure ``DataFrame -> DataFrame`` transform built from Spark SQL expressions (no
Python UDFs), because ingest runs over hundreds of millions of lines a day. The formats::

    common:   host ident authuser [dd/Mon/yyyy:HH:mm:ss +zzzz] "request" status bytes
    combined: common + ' "referer" "user-agent"'

Inside quoted fields Apache escapes ``"`` and ``\\`` with a backslash and non-printable bytes as ``\\xhh``.

Cost model (measured on 3M tutorial lines, 2 cores): every regex call decodes the whole line to a Java
string and scans it, and ``regexp_extract`` runs the regex once *per group* (9 groups took 40 s, one
took 8 s). So the line is matched **once**: a single ``regexp_replace`` of the *head* of the line
(host .. bytes) packs its fields, separated by ``\\x01``, in front of the untouched tail (referer and
user agent, about 60% of the bytes), and the tail is checked with byte-level string functions; the
full quoted-string regex on the tail only runs for the rare lines with backslashes, or when the
entity is the referer or user agent. Timestamps are parsed with integer arithmetic on fixed
offsets (``to_timestamp`` with a pattern cost 12 s on the same data). Expensive checks that only
explain *why* a line is bad run inside ``CASE WHEN`` branches, which Spark evaluates lazily, so good
lines never pay for them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

__all__ = [
    "ENTITY_FIELDS",
    "FILTERED",
    "KEPT",
    "PATH_MATCH_MODES",
    "REASONS",
    "canonical_ipv6",
    "classify_lines",
    "clf_timestamp",
    "ip_columns",
    "parse_lines",
]

#: Outcome of a line that became an event, and of a well-formed line for another resource.
KEPT = "kept"
FILTERED = "filtered"
#: Quarantine reasons, in the order they are tested (the first that applies is recorded).
REASONS = (
    "empty",  # blank line
    "overlong",  # longer than max_line_length bytes (not parsed at all: protects the regex engine)
    "binary",  # invalid UTF-8 or control characters
    "truncated",  # ends inside a quoted or bracketed field
    "field_count",  # not 7 (common) or 9 (combined) fields
    "malformed",  # right number of fields, wrong shape (e.g. status not 3 digits, request not quoted)
    "bad_timestamp",  # not dd/Mon/yyyy:HH:mm:ss +zzzz, or no such date/time
    "bad_ip",  # client address is not a valid IPv4 or IPv6 literal
    "missing_entity",  # the entity field is '-' or empty (e.g. no authenticated user)
)
ENTITY_FIELDS = ("user", "ident", "user_agent", "referer", "query")
PATH_MATCH_MODES = ("exact", "prefix", "regex")

_SEP = "\x01"  # cannot occur in a parsed head: every head character class excludes control characters
# One token of the head: no whitespace, no control characters, no U+FFFD (where invalid UTF-8 decoded).
_TOK = r"[^\s\p{Cntrl}\x{FFFD}]++"
# Body of a quoted field: unrolled-loop form with possessive quantifiers (no backtracking, no deep
# recursion in java.util.regex, which the naive (?:[^"\\]|\\.)* alternation suffers from on long agents).
_QBODY = r'[^"\\\p{Cntrl}]*+(?:\\[^\p{Cntrl}][^"\\\p{Cntrl}]*+)*+'
_HEAD = rf'^({_TOK}) ({_TOK}) ({_TOK}) \[([^\]\p{{Cntrl}}]{{1,64}})\] "({_QBODY})" ([0-9]{{3}}|-) ([0-9]++|-)'
_HEAD_PACKED = _SEP + _SEP.join(f"${i}" for i in range(1, 8)) + _SEP
_TAIL = rf'^ "({_QBODY})" "({_QBODY})"$'
# Diagnostics, only evaluated for lines that failed to parse.
_LOOSE_Q = r'"[^"\\]*+(?:\\.[^"\\]*+)*+'
_TRUNCATED = rf'^(?:(?:{_LOOSE_Q}"|\[[^\]]*+\]|[^\s"\[]\S*+)\s+)*+(?:{_LOOSE_Q}|\[[^\]]*+|\S*\\)$'
_FIELD = rf'{_LOOSE_Q}"|\[[^\]]*+\]|\S++'
_BINARY = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F\x{FFFD}]"
_TIME_SHAPE = r"^[0-9]{2}/[A-Z][a-z]{2}/[0-9]{4}:[0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4}$"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"^{_OCTET}(?:\.{_OCTET}){{3}}$"  # strict: no leading zeros, like ipinsights.ip.parse_ipv4
_IPV6_CHARS = r"^[0-9A-Fa-f:.]{2,45}$"
_MONTHS = "JanFebMarAprMayJunJulAugSepOctNovDec"


def parse_lines(lines: DataFrame, max_line_length: int = 8192, parse_tail: bool = False) -> DataFrame:
    """Split each ``value`` into log fields; adds ``parse_error`` (null when the line is well formed).

    Added columns (strings, null where the line did not parse): ``client``, ``ident``, ``user``,
    ``time`` (``dd/Mon/yyyy:HH:mm:ss +zzzz``), ``request`` (Apache's escapes kept), ``status``,
    ``bytes``, ``method``, ``url``, ``path``, ``query``, and, with ``parse_tail`` (null otherwise),
    ``referer`` and ``user_agent`` (escapes removed; null on a common-format line).
    """
    v = F.col("value")
    fits = F.octet_length(v) <= F.lit(max_line_length)
    # Fast path, no regex: the usual line splits on single spaces into exactly 10 pieces
    # (host ident user [time zone] "METHOD url PROTO" status rest), and Java's String.split on one
    # character is a plain scan. Anything unusual (escapes, spaces in the URL, '-' request or status)
    # takes the exact regex path below, which only those lines pay for.
    df = lines.withColumn("_sp", F.when(fits, F.split(v, " ", 10)))

    def sp(i: int) -> Column:
        return F.try_element_at(F.col("_sp"), F.lit(i + 1))

    df = df.withColumn("_req", F.concat_ws(" ", sp(5), sp(6), sp(7))).withColumn("_rest", F.split(sp(9), " ", 2))
    req = F.col("_req")
    bytes_ = F.try_element_at(F.col("_rest"), F.lit(1))
    df = df.withColumn("_ftail", F.coalesce(F.try_element_at(F.col("_rest"), F.lit(2)), F.lit("")))
    tail = F.col("_ftail")
    fast = (
        (F.size(F.col("_sp")) == 10)
        & sp(3).startswith("[")
        & (F.length(sp(3)) == 21)
        & sp(4).endswith("]")
        & (F.length(sp(4)) == 6)
        & req.startswith('"')
        & req.endswith('"')
        & (_count(req, '"') == 2)
        & ~req.contains("\\")
        & sp(8).rlike("^[0-9]{3}$")
        & bytes_.rlike("^(?:[0-9]+|-)$")
        & ((tail == "") | _simple_tail(tail))
    )
    df = df.withColumn("_fast", F.coalesce(fast, F.lit(False)))
    fast_fields = [
        sp(0),
        sp(1),
        sp(2),
        F.concat(F.substring(sp(3), 2, 20), F.lit(" "), F.substring(sp(4), 1, 5)),
        F.substring(req, 2, F.length(req) - 2),
        sp(8),
        bytes_,
        F.when(tail == "", tail).otherwise(F.concat(F.lit(" "), tail)),  # same shape as the regex path's tail
    ]
    # Exact path: one regexp_replace packs the head fields, separated by \x01, in front of the
    # untouched tail (regexp_extract would rerun the whole match once per group).
    slow = F.when(fits & ~F.col("_fast"), F.split(F.regexp_replace(v, F.lit(_HEAD), F.lit(_HEAD_PACKED)), _SEP, 9))
    df = df.withColumn("_slow", slow)
    slow_tail = F.try_element_at(F.col("_slow"), F.lit(9))
    slow_ok = (F.size(F.col("_slow")) == 9) & ((slow_tail == "") | _simple_tail(slow_tail, 1) | slow_tail.rlike(_TAIL))
    df = df.withColumn("_slow_ok", F.coalesce(slow_ok, F.lit(False)))
    names = ("client", "ident", "user", "time", "request", "status", "bytes", "_tail")
    df = df.select(
        *lines.columns,
        "_fast",
        "_slow_ok",
        *[
            F.when(F.col("_fast"), f).when(F.col("_slow_ok"), F.try_element_at(F.col("_slow"), F.lit(i + 2))).alias(n)
            for i, (f, n) in enumerate(zip(fast_fields, names, strict=True))
        ],
    )
    ok = F.col("_fast") | F.col("_slow_ok")
    url = F.split_part(F.col("request"), F.lit(" "), F.lit(2))
    return df.select(
        *lines.columns,
        *names[:-1],
        F.split_part(F.col("request"), F.lit(" "), F.lit(1)).alias("method"),
        url.alias("url"),
        F.substring_index(url, "?", 1).alias("path"),
        F.when(url.contains("?"), F.substring_index(F.substring_index(url, "?", -1), "#", 1)).alias("query"),
        *(_tail_fields(F.col("_tail")) if parse_tail else _null_tail()),
        F.when(~ok, _structure_reason(v, max_line_length)).alias("parse_error"),
    )


def _count(s: Column, ch: str) -> Column:
    return F.length(s) - F.length(F.replace(s, F.lit(ch), F.lit("")))


def _simple_tail(tail: Column, lead: int = 0) -> Column:
    """Exact check, byte-level, for a combined tail without escapes: 4 quotes laid out as '"x" "y"'."""
    q = ' "' if lead else '"'
    return (
        (_count(tail, '"') == 4) & tail.startswith(q) & tail.endswith('"') & tail.contains('" "') & ~tail.contains("\\")
    )


def _tail_fields(tail: Column) -> list[Column]:
    def field(i: int) -> Column:
        raw = F.regexp_extract(tail, _TAIL, i)
        return F.when(tail != "", F.regexp_replace(raw, r"\\(.)", "$1"))

    return [field(1).alias("referer"), field(2).alias("user_agent")]


def _null_tail() -> list[Column]:
    return [F.lit(None).cast("string").alias("referer"), F.lit(None).cast("string").alias("user_agent")]


def _structure_reason(v: Column, max_line_length: int) -> Column:
    """Why a line failed the structural parse (lazy CASE: only bad lines pay for these regexes)."""
    n_fields = F.size(F.regexp_extract_all(v, F.lit(_FIELD), 0))
    return (
        F.when(F.trim(v) == "", "empty")
        .when(F.octet_length(v) > max_line_length, "overlong")
        .when(~F.is_valid_utf8(v) | v.rlike(_BINARY), "binary")
        .when(v.rlike(_TRUNCATED), "truncated")
        .when(~n_fields.isin(7, 9), "field_count")
        .otherwise("malformed")
    )


def clf_timestamp(time: Column) -> Column:
    """``dd/Mon/yyyy:HH:mm:ss +zzzz`` -> UTC timestamp (null if malformed or no such date/time).

    Integer arithmetic on fixed offsets (days from the civil date, Howard Hinnant's algorithm) instead
    of a ``DateTimeFormatter`` per row; the offset is subtracted, so the result is the UTC instant
    whatever ``spark.sql.session.timeZone`` is.
    """
    return _timestamp_of_checked(F.when(time.rlike(_TIME_SHAPE), time))


def _timestamp_of_checked(s: Column) -> Column:
    """:func:`clf_timestamp` for a column already known to have the right shape (or null).

    ``s`` is referenced many times below: pass a column reference, not an expression, so that Spark
    computes it once per row.
    """

    def num(pos: int, length: int) -> Column:
        return F.substring(s, pos, length).try_cast("long")

    d, y, hh, mi, ss = num(1, 2), num(8, 4), num(13, 2), num(16, 2), num(19, 2)
    mpos = F.instr(F.lit(_MONTHS), F.substring(s, 4, 3))
    m = F.when((mpos > 0) & (mpos % 3 == 1), F.floor((mpos + 2) / 3))
    leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
    days_in_month = F.when(m == 2, F.when(leap, 29).otherwise(28)).otherwise(30 + (m + F.floor(m / 8)) % 2)
    sign = F.when(F.substring(s, 22, 1) == "-", -1).otherwise(1)
    oh, om = num(23, 2), num(25, 2)
    valid = (
        m.isNotNull()
        & (d >= 1)
        & (d <= days_in_month)
        & (y >= 1970)
        & (hh < 24)
        & (mi < 60)
        & (ss < 60)
        & (oh <= 18)
        & (om < 60)
    )
    # Days since 1970-01-01 of the civil date y-m-d (y >= 1970 keeps every term non-negative).
    yy = y - F.when(m <= 2, 1).otherwise(0)
    era = F.floor(yy / 400)
    yoe = yy - era * 400
    doy = F.floor((153 * (m + F.when(m > 2, -3).otherwise(9)) + 2) / 5) + d - 1
    doe = yoe * 365 + F.floor(yoe / 4) - F.floor(yoe / 100) + doy
    days = era * 146097 + doe - 719468
    epoch = days * 86400 + hh * 3600 + mi * 60 + ss - sign * (oh * 3600 + om * 60)
    return F.when(valid, F.timestamp_seconds(epoch))


def canonical_ipv6(ip: Column) -> Column:
    """IPv6 literal -> RFC 5952 text (lower case, no leading zeros, longest zero run as ``::``).

    Validation and expansion use ``java.net.InetAddress.getByName`` through ``try_reflect``. Call it
    only on strings with ':' and nothing but hex digits, ':' and '.' (as :func:`ip_columns` does):
    Java parses those as literals, with no DNS lookup. An IPv4-mapped address (``::ffff:1.2.3.4``)
    comes back as the IPv4 address. Null for an invalid literal.
    """
    return _compress_ipv6(_java_ip_text(ip))


def _java_ip_text(ip: Column) -> Column:
    # InetAddress.toString() is "hostname/address"; the hostname is empty for a literal.
    return F.regexp_replace(F.try_reflect(F.lit("java.net.InetAddress"), F.lit("getByName"), ip), "^[^/]*/", "")


def _compress_ipv6(full: Column) -> Column:
    """Java's uncompressed ``2001:db8:0:0:0:0:0:1`` -> ``2001:db8::1`` (pass a column reference)."""
    padded = F.concat(F.lit(":"), full, F.lit(":"))
    # Longest run of zero groups (leftmost on ties): test runs of 8 groups down to 2, replace the first.
    compressed = F.lit(None).cast("string")
    for k in range(2, 9):
        run = ":0" * k + ":"
        compressed = F.when(
            padded.contains(run), F.regexp_replace(padded, "^(.*?)" + re.escape(run) + "(.*)$", "$1::$2")
        ).otherwise(compressed)
    compressed = F.coalesce(compressed, padded)
    out = F.regexp_replace(F.regexp_replace(compressed, "^:(?!:)", ""), "(?<!:):$", "")
    return F.when(full.contains(":"), out).otherwise(full)


def ip_columns(client: Column) -> tuple[Column, Column, Column]:
    """(canonical ip string, ip_int, ip_version) for a client address column; all null if invalid."""
    is_v4 = client.rlike(_IPV4)
    v6_text = F.when(~is_v4 & client.contains(":") & client.rlike(_IPV6_CHARS), canonical_ipv6(client))
    return _ip_of_checked(F.when(is_v4, client).otherwise(v6_text))


def _ip_of_checked(ip: Column) -> tuple[Column, Column, Column]:
    """:func:`ip_columns` for a column that is already canonical text or null (pass a column reference)."""
    is_v4 = ~ip.contains(":")

    def octet(i: int) -> Column:
        return F.split_part(ip, F.lit("."), F.lit(i)).try_cast("long")

    ip_int = F.when(is_v4, octet(1) * 16777216 + octet(2) * 65536 + octet(3) * 256 + octet(4))
    version = F.when(is_v4, F.lit(4)).otherwise(F.lit(6))
    return ip.alias("ip"), ip_int.cast("long").alias("ip_int"), version.cast("int").alias("ip_version")


def _resource_match(
    df: DataFrame, methods: Sequence[str], path: str, path_match: str, statuses: Sequence[int]
) -> Column:
    cond = F.lit(True)
    if methods:
        cond &= F.col("method").isin([m.upper() for m in methods])
    if path_match == "exact":
        cond &= F.col("path") == path
    elif path_match == "prefix":
        cond &= F.col("path").startswith(path)
    elif path_match == "regex":
        cond &= F.col("path").rlike(f"^(?:{path})$")  # whole-path match: 'login' must not hit '/x/loginfo'
    else:
        raise ValueError(f"path_match={path_match!r} must be one of {PATH_MATCH_MODES}")
    if statuses:
        cond &= F.col("status").isin([f"{int(s):03d}" for s in statuses])
    return cond


def _entity(field: str, query_param: str) -> Column:
    if field in ("user", "ident", "user_agent", "referer"):
        return F.col(field)
    if field == "query":
        if not query_param:
            raise ValueError("entity field 'query' needs a query_param")
        value = F.regexp_extract(F.col("query"), rf"(?:^|&){re.escape(query_param)}=([^&]*)", 1)
        present = F.col("query").rlike(rf"(?:^|&){re.escape(query_param)}=")
        return F.when(present, F.try_url_decode(value))
    raise ValueError(f"entity field {field!r} must be one of {ENTITY_FIELDS}")


def classify_lines(
    lines: DataFrame,
    *,
    methods: Sequence[str] = ("GET",),
    path: str = "/login_success",
    path_match: str = "exact",
    statuses: Sequence[int] = (200,),
    entity_field: str = "user",
    query_param: str = "",
    max_line_length: int = 8192,
    raw_max_chars: int = 1024,
) -> DataFrame:
    """Decide the outcome of every line: an event, filtered out, or quarantined with a reason.

    ``lines`` has ``value`` and ``source_file``. Returns ``outcome`` (:data:`KEPT`, :data:`FILTERED`
    or one of :data:`REASONS`), ``source_file``, ``entity``, ``ip``, ``ip_int``, ``ip_version``,
    ``ts`` and ``dt`` (set for kept lines only) and ``raw`` (the line cut to ``raw_max_chars``
    characters, made valid UTF-8; set for quarantined lines only, so that caching this frame stays small).
    Structural errors are quarantined whatever the resource; timestamp, address and entity are only
    checked on lines of the selected resource (a static asset has no user, and that is not an error).
    """
    parsed = parse_lines(lines, max_line_length, parse_tail=entity_field in ("user_agent", "referer"))
    ok = F.col("parse_error").isNull()
    # Staged selects: a column that later expressions use several times is computed once per row
    # (Spark does not collapse a projection into its consumer when that would repeat costly work).
    df = parsed.select(
        "value",
        "source_file",
        "parse_error",
        F.when(ok, _resource_match(parsed, methods, path, path_match, statuses)).alias("_selected"),
        "client",
        "time",
        _entity(entity_field, query_param).alias("entity"),
    )
    sel = ok & F.col("_selected")
    client = F.col("client")
    is_v4 = client.rlike(_IPV4)
    v6_ok = client.contains(":") & client.rlike(_IPV6_CHARS)
    df = df.select(
        "value",
        "source_file",
        "parse_error",
        "_selected",
        F.when(sel, F.col("entity")).alias("entity"),
        F.when(sel & F.col("time").rlike(_TIME_SHAPE), F.col("time")).alias("_time"),
        F.when(sel & is_v4, client).alias("_v4"),
        F.when(sel & ~is_v4 & v6_ok, _java_ip_text(client)).alias("_v6"),
    )
    df = df.select(
        "value",
        "source_file",
        "parse_error",
        "_selected",
        "entity",
        "_time",
        F.coalesce(F.col("_v4"), _compress_ipv6(F.col("_v6"))).alias("ip"),
    )
    ip, ip_int, ip_version = _ip_of_checked(F.col("ip"))
    entity = F.col("entity")
    outcome = (
        F.when(F.col("parse_error").isNotNull(), F.col("parse_error"))
        .when(~F.col("_selected"), F.lit(FILTERED))
        .when(F.col("_time").isNull(), F.lit("bad_timestamp"))
        .when(F.col("ip").isNull(), F.lit("bad_ip"))
        .when(entity.isNull() | entity.isin("-", ""), F.lit("missing_entity"))
        .when(~F.is_valid_utf8(entity) | entity.rlike(_BINARY), F.lit("binary"))
        .otherwise(F.lit(KEPT))
    )
    df = df.select(
        "value",
        "source_file",
        "entity",
        ip,
        ip_int,
        ip_version,
        _timestamp_of_checked(F.col("_time")).alias("ts"),
        outcome.alias("outcome"),
    )
    # The timestamp can still be null for a well-shaped but impossible date (31/Feb).
    impossible_date = (F.col("outcome") == KEPT) & F.col("ts").isNull()
    df = df.withColumn("outcome", F.when(impossible_date, "bad_timestamp").otherwise(F.col("outcome")))
    kept = F.col("outcome") == KEPT
    bad = ~F.col("outcome").isin(KEPT, FILTERED)
    return df.select(
        "outcome",
        "source_file",
        F.when(kept, F.col("entity")).alias("entity"),
        F.when(kept, F.col("ip")).alias("ip"),
        F.when(kept, F.col("ip_int")).alias("ip_int"),
        F.when(kept, F.col("ip_version")).alias("ip_version"),
        F.when(kept, F.col("ts")).alias("ts"),
        # The UTC day from the epoch, not to_date(ts): to_date would use the session time zone.
        F.when(kept, F.date_from_unix_date(F.floor(F.unix_seconds(F.col("ts")) / 86400).cast("int"))).alias("dt"),
        F.when(bad, F.substring(F.make_valid_utf8(F.col("value")), 1, raw_max_chars)).alias("raw"),
    )
