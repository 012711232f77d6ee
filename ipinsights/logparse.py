"""Parse Apache/nginx Common and Combined Log Format lines into (entity, ip, ts) events, in the JVM.

Everything here is a pure ``DataFrame -> DataFrame`` transform built from Spark SQL expressions (no
Python UDFs, no reflection), because ingest runs over hundreds of millions of lines a day. The formats::

    common:   host ident authuser [dd/Mon/yyyy:HH:mm:ss +zzzz] "request" status bytes
    combined: common + ' "referer" "user-agent"'

Inside quoted fields Apache escapes ``"`` and ``\\`` with a backslash and non-printable bytes as ``\\xhh``.

Cost model (3M tutorial lines, 2 cores): each regex call decodes the line to a Java string and scans
it; ``regexp_extract`` reruns the match once *per group*; Java's regex engine is fast on simple
character classes and several times slower on unions with ``\\p{Cntrl}``; Spark's ``length`` and
``replace`` walk the string byte by byte. So the usual line costs **one** ``regexp_replace`` with a
strict pattern of simple classes (:data:`_FAST`) that validates the whole line and packs the fields
the classification needs, separated by ``\\x01``; one ``split`` unpacks them. Only lines that pattern
rejects (escapes in the request, a ``-`` status, unusual times or tokens, junk: well under 1%) pay
for the exact grammar below and for the diagnosis of *why* a line is bad, inside ``CASE WHEN``
branches that Spark evaluates lazily. The fast pattern accepts a subset of the exact grammar and
yields the same fields, so the path a line takes never changes its outcome. Timestamps are parsed
with integer arithmetic on fixed offsets (``to_timestamp`` with a pattern cost 12 s on the same data).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

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
    "quarantined",
]

#: Outcome of a line that became an event, and of a well-formed line for another resource.
KEPT = "kept"
FILTERED = "filtered"
#: Quarantine reasons, in the order they are tested (the first that applies is recorded).
REASONS = (
    "empty",  # blank line
    "overlong",  # longer than max_line_length bytes (not parsed at all: protects the regex engine)
    "binary",  # invalid UTF-8 or control characters (in the head of the line, or in the entity)
    "truncated",  # ends inside a quoted or bracketed field
    "field_count",  # not 7 (common) or 9 (combined) fields
    "malformed",  # right number of fields, wrong shape (e.g. status not 3 digits, request not quoted)
    "bad_timestamp",  # not dd/Mon/yyyy:HH:mm:ss +zzzz, or no such date/time
    "bad_ip",  # client address is not a valid IPv4 or IPv6 literal
    "missing_entity",  # the entity field is '-' or empty (e.g. no authenticated user)
)
ENTITY_FIELDS = ("user", "ident", "user_agent", "referer", "query")
_UNPARSED = "_unparsed"  # outcome until the reason is known
_CANDIDATE = "_candidate"  # a line of the selected resource, until its timestamp, address and entity are checked
PATH_MATCH_MODES = ("exact", "prefix", "regex")

# Packed fields are separated by \x01: no parsed field can hold it (head tokens and the request exclude
# control characters, and lines holding \x01 anywhere take neither parse path: they are binary junk).
_SEP = "\x01"
# Exact grammar. One token of the head: no whitespace, no control characters, no U+FFFD (where
# invalid UTF-8 decoded).
_TOK = r"[^\s\p{Cntrl}\x{FFFD}]++"
# Body of a quoted field: unrolled-loop form with possessive quantifiers (no backtracking, no deep
# recursion in java.util.regex, which the naive (?:[^"\\]|\\.)* alternation suffers from on long agents).
_QBODY = r'[^"\\\p{Cntrl}]*+(?:\\[^\p{Cntrl}][^"\\\p{Cntrl}]*+)*+'
_HEAD = rf'^({_TOK}) ({_TOK}) ({_TOK}) \[([^\]\p{{Cntrl}}]{{1,64}})\] "({_QBODY})" ([0-9]{{3}}|-) ([0-9]++|-)'
_HEAD_PACKED = _SEP + _SEP.join(f"${i}" for i in range(1, 8)) + _SEP
# Referer and user agent: control characters there are not checked (they are neither printed nor
# parsed unless one of them is the entity, and then the entity check quarantines them as binary).
_TBODY = r'[^"\\]*+(?:\\.[^"\\]*+)*+'
_TAIL = rf'^ "({_TBODY})" "({_TBODY})"$'
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


_PARSED = ("client", "ident", "user", "time", "request", "method", "url", "path", "query", "status")


def parse_lines(lines: DataFrame, max_line_length: int = 8192, parse_tail: bool = False) -> DataFrame:
    """Split each ``value`` into log fields; adds ``parse_error`` (null when the line is well formed).

    Added columns (strings, null where the line did not parse): ``client``, ``ident``, ``user``,
    ``time`` (the text between the brackets, shape not checked: see :func:`clf_timestamp`),
    ``request`` (Apache's escapes kept), ``method``, ``url``, ``path``, ``query``, ``status`` and,
    with ``parse_tail`` (null otherwise), ``referer`` and ``user_agent`` (escapes removed; null on a
    common-format line).
    """
    parsed = _parse(lines, max_line_length, parse_tail)
    reason = F.when(~F.col("_ok"), _structure_reason(F.col("value"), max_line_length))
    return parsed.select(*lines.columns, *_PARSED, "referer", "user_agent", reason.alias("parse_error"))


def _parse(lines: DataFrame, max_line_length: int, parse_tail: bool) -> DataFrame:
    """:func:`parse_lines` with its working columns (``_``-prefixed) kept.

    Every stage adds columns and keeps all it got (``withColumns``): a projection that uses all of
    its input gets a Java method of its own in whole-stage codegen. Dropping columns on the way
    inlines every stage into one method too big for the JIT (it compiled to 480 KB of machine code,
    seconds per recompilation).
    """
    v = F.col("value")
    fits = F.octet_length(v) <= F.lit(max_line_length)
    # Fast path, no regex: split on '"' (Java's String.split on one character, a plain scan), then
    # the short head and status pieces on ' '. The usual combined line gives exactly
    #   [host ident user [time zone] , request, " status bytes ", referer, " ", agent, ""]
    # (a common-format one the first 3, its status piece without the trailing space).
    df = lines.withColumn("_q", F.when(fits, F.split(v, '"', -1)))

    def q(i: int) -> Column:
        return F.get(F.col("_q"), i)

    df = df.withColumns({"_h": F.split(q(0), " ", -1), "_s": F.split(q(2), " ", -1)})

    def h(i: int) -> Column:
        return F.get(F.col("_h"), i)

    def s(i: int) -> Column:
        return F.get(F.col("_s"), i)

    n = F.size("_q")
    combined = (n == 7) & (q(4) == " ") & (q(6) == "") & (F.size("_s") == 4) & (s(3) == "")
    # A quoted piece ending in '\' means its closing quote was escaped: the exact path decides.
    escaped_quote = q(1).endswith("\\") | q(3).endswith("\\") | q(5).endswith("\\")
    fast = (
        (combined | ((n == 3) & (F.size("_s") == 3)))
        & ~escaped_quote
        # 5 tokens, single spaces: client ident user [dd/Mon/yyyy:HH:mm:ss +zzzz] (the time's
        # shape is checked later, on the lines of the selected resource)
        & (F.size("_h") == 6)
        & (h(5) == "")
        & ~q(0).startswith(" ")
        & ~q(0).contains("  ")
        & h(3).startswith("[")
        & (F.octet_length(h(3)) == 21)
        & h(4).endswith("]")
        & (F.octet_length(h(4)) == 6)
        & (s(0) == "")
        & (F.octet_length(s(1)) == 3)
        & (s(1).try_cast("int") >= 100)
        & ((s(2) == "-") | (s(2).try_cast("long") >= 0))  # bytes (unused: a '+' sign is let through)
    )
    df = df.withColumn("_fast", F.coalesce(fast, F.lit(False)))
    # Exact path, for the rest (escapes, '-' status, junk): one regexp_replace packs the head fields
    # in front of the untouched tail, checked by regex. Lines holding \x01 would fake the packing
    # (and are binary junk): they stay unparsed.
    slow = F.split(F.regexp_replace(v, F.lit(_HEAD), F.lit(_HEAD_PACKED)), _SEP, 9)
    df = df.withColumn("_slow", F.when(fits & ~F.col("_fast") & ~v.contains(_SEP), slow))
    slow_tail = F.try_element_at(F.col("_slow"), F.lit(9))
    slow_ok = (F.size(F.col("_slow")) == 9) & ((slow_tail == "") | slow_tail.rlike(_TAIL))
    df = df.withColumn("_slow_ok", F.coalesce(slow_ok, F.lit(False)))

    # The fields as one array from either path (one CASE, not one per field: smaller code).
    names = ["client", "ident", "user", "time", "request", "status"]
    fast_fields = [
        h(0),
        h(1),
        h(2),
        F.concat(F.substring(h(3), 2, 20), F.lit(" "), F.substring(h(4), 1, 5)),
        q(1),
        s(1),
    ]
    exact_fields = F.slice(F.col("_slow"), 2, 6)
    if parse_tail:
        names += ["_ref", "_ua"]
        fast_fields += [F.when(n == 7, q(3)), F.when(n == 7, q(5))]
        exact_fields = F.concat(exact_fields, F.array(_tail_field(slow_tail, 1), _tail_field(slow_tail, 2)))
    df = df.withColumn("_f", F.when(F.col("_fast"), F.array(*fast_fields)).when(F.col("_slow_ok"), exact_fields))
    df = df.withColumns({name: F.get(F.col("_f"), i) for i, name in enumerate(names)})
    if not parse_tail:
        df = df.withColumns({"_ref": F.lit(None).cast("string"), "_ua": F.lit(None).cast("string")})
    df = df.withColumn("_ok", F.col("_f").isNotNull())
    # split on ' ' with a limit: String.split's no-regex path (split_part quotes the delimiter as a regex).
    df = df.withColumn("_r", F.split(F.col("request"), " ", 3))
    url = F.coalesce(F.get(F.col("_r"), 1), F.when(F.col("request").isNotNull(), F.lit("")))
    df = df.withColumns({"method": F.get(F.col("_r"), 0), "url": url})
    url = F.col("url")
    return df.withColumns(
        {
            "path": F.substring_index(url, "?", 1),
            "query": F.when(url.contains("?"), F.substring_index(F.substring_index(url, "?", -1), "#", 1)),
            "referer": _unescape(F.col("_ref")),
            "user_agent": _unescape(F.col("_ua")),
        }
    )


def _tail_field(tail: Column, i: int) -> Column:
    """Referer (1) or agent (2) of an exact-path tail, escapes kept; null on a common-format line."""
    return F.when(tail != "", F.regexp_extract(tail, _TAIL, i))


def _unescape(raw: Column) -> Column:
    return F.when(raw.contains("\\"), F.regexp_replace(raw, r"\\(.)", "$1")).otherwise(raw)


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

    The shape is checked first (a regex on 26 characters), then the fixed-width fields are rearranged
    into ISO 8601 (``yyyy-MM-ddTHH:mm:ss+zz:zz``) and cast: Spark's string-to-timestamp cast is a
    hand-written parser, cheaper per row than ``try_to_timestamp`` with a pattern (a
    ``DateTimeFormatter``), and as strict: 31/Feb, 24:00, a leap second and offsets beyond 18 hours
    give null (tested against the pattern parser). The offset is applied, so the result is the UTC
    instant whatever ``spark.sql.session.timeZone`` is. Years before 1970 are refused too (they only
    come from broken clocks).
    """
    return F.when(_time_shape_ok(time), _timestamp_of_shaped(time))


def _time_shape_ok(time: Column) -> Column:
    return time.rlike(_TIME_SHAPE) & (F.substring(time, 8, 4) >= F.lit("1970"))


def _timestamp_of_shaped(time: Column) -> Column:
    """:func:`clf_timestamp` of text already known to have the right shape."""
    month = F.instr(F.lit(_MONTHS), F.substring(time, 4, 3))  # 1, 4, 7, ... for Jan, Feb, Mar, ...
    mm = F.when(month % 3 == 1, F.lpad(((month + 2) / 3).cast("int").cast("string"), 2, "0"))
    iso = F.concat(
        F.substring(time, 8, 4),  # yyyy
        F.lit("-"),
        mm,
        F.lit("-"),
        F.substring(time, 1, 2),  # dd
        F.lit("T"),
        F.substring(time, 13, 8),  # HH:mm:ss
        F.substring(time, 22, 3),  # +zz
        F.lit(":"),
        F.substring(time, 25, 2),  # zz
    )
    return iso.try_cast("timestamp")


# IPv6 text that is already canonical (RFC 5952) and needs no rewriting, which is what servers log:
# lower-case groups without leading zeros, no two adjacent zero groups, and at most one '::', standing
# for 2 or more groups (so at most 6 written) and not next to a written zero group; not IPv4-mapped
# (that one becomes IPv4). The shape is one regex; the zero-group rules are byte-level ``contains``
# checks in :func:`_is_canonical_v6` (as '.*' lookaheads they rescanned the text and made this the
# costliest check of an IPv6 line).
_G6 = "(?:[1-9a-f][0-9a-f]{0,3}|0)"
_V6_SHAPE = (
    "^(?:"
    + "|".join(
        [rf"{_G6}(?::{_G6}){{7}}"]
        + [  # a groups written before '::', at most 6 - a after it
            ("" if a == 0 else rf"{_G6}(?::{_G6}){{{a - 1}}}")
            + "::"
            + ("" if a == 6 else rf"(?:{_G6}(?::{_G6}){{0,{5 - a}}})?")
            for a in range(7)
        ]
    )
    + ")$"
)


def _is_canonical_v6(client: Column) -> Column:
    """RFC 5952 text of an IPv6 address other than IPv4-mapped (false for IPv4 text)."""
    padded = F.concat(F.lit(":"), client, F.lit(":"))  # so that the rules below also hold at both ends
    return (
        client.contains(":")
        & ~client.startswith("::ffff:")
        & ~padded.contains(":0:0:")  # two adjacent zero groups
        & ~padded.contains(":0::")  # a written zero group next to '::'
        & ~padded.contains("::0:")
        & client.rlike(_V6_SHAPE)
    )


def canonical_ipv6(ip: Column) -> Column:
    """IPv6 literal -> RFC 5952 text (lower case, no leading zeros, longest zero run as ``::``).

    Validation and expansion use ``java.net.InetAddress.getByName`` through ``try_reflect``. Call it
    only on strings with ':' and nothing but hex digits, ':' and '.' (as :func:`ip_columns` does):
    Java parses those as literals, with no DNS lookup. An IPv4-mapped address (``::ffff:1.2.3.4``)
    comes back as the IPv4 address. Null for an invalid literal.
    """
    # InetAddress.toString() is "hostname/address"; the hostname is empty for a literal.
    java = F.regexp_replace(F.try_reflect(F.lit("java.net.InetAddress"), F.lit("getByName"), ip), "^[^/]*/", "")
    return _let(java, _compress_ipv6)


def _let(value: Column, body: Callable[[Column], Column]) -> Column:
    """``body(value)`` with ``value`` bound to a lambda variable: computed once however often ``body``
    uses it, without repeating its expression in the tree (and in the generated code)."""
    return F.get(F.transform(F.array(value), body), 0)


def _compress_ipv6(full: Column) -> Column:
    """Java's uncompressed ``2001:db8:0:0:0:0:0:1`` -> ``2001:db8::1``; IPv4 text passes through."""
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


def _ipv4_octets(ip: Column) -> Column:
    """The 4 octets of a dotted quad as strings (null for IPv6 text and null)."""
    return F.when(~ip.contains(":"), F.split(ip, r"\.", 4))  # "\." takes String.split's no-regex path


def _ipv4_int(octets: Column) -> Column:
    """Integer of a valid dotted quad's :func:`_ipv4_octets` (pass a column: it is used 4 times, and
    Spark does not share a subexpression that sits inside a CASE branch)."""
    o = [F.get(octets, i).try_cast("long") for i in range(4)]
    return o[0] * 16777216 + o[1] * 65536 + o[2] * 256 + o[3]


def _needs_java(client: Column) -> Column:
    """IPv6 spellings other than the canonical one, for :func:`canonical_ipv6` (else not an address)."""
    return client.contains(":") & ~_is_canonical_v6(client) & client.rlike(_IPV6_CHARS)


def ip_columns(client: Column) -> tuple[Column, Column, Column]:
    """(canonical ip string, ip_int, ip_version) for a client address column; all null if invalid.

    Each expression repeats the ones before: over many rows, compute them in stages (as
    :func:`classify_lines` does).
    """
    ip = F.when(client.rlike(_IPV4) | _is_canonical_v6(client), client).when(
        _needs_java(client), canonical_ipv6(client)
    )
    ip_int = _ipv4_int(_ipv4_octets(ip))
    version = F.when(ip.contains(":"), F.lit(6)).when(ip.isNotNull(), F.lit(4))
    return ip.alias("ip"), ip_int.alias("ip_int"), version.alias("ip_version")


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
    """The entity of a parsed line (the agent and referer from :func:`_parse`'s raw, escaped columns)."""
    if field in ("user", "ident"):
        return F.col(field)
    if field in ("user_agent", "referer"):
        return _unescape(F.col("_ua" if field == "user_agent" else "_ref"))
    if field == "query":
        if not query_param:
            raise ValueError("entity field 'query' needs a query_param")
        value = F.regexp_extract(F.col("query"), rf"(?:^|&){re.escape(query_param)}=([^&]*)", 1)
        present = F.col("query").rlike(rf"(?:^|&){re.escape(query_param)}=")
        return F.when(present, F.try_url_decode(value))
    raise ValueError(f"entity field {field!r} must be one of {ENTITY_FIELDS}")


def quarantined(outcome: Column) -> Column:
    """True where an ``outcome`` of :func:`classify_lines` is a reason to quarantine the line."""
    return ~outcome.isin(KEPT, FILTERED)


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
    entity_of = _entity(entity_field, query_param)  # checks the options before any work
    parsed = _parse(lines, max_line_length, parse_tail=entity_field in ("user_agent", "referer"))
    # Stages of withColumn(s): a column that later expressions use several times is computed once
    # per row (Spark does not collapse a projection into its consumer when that would repeat work).
    selected = F.col("_ok") & _resource_match(parsed, methods, path, path_match, statuses)
    df = parsed.withColumn("_sel", F.coalesce(selected, F.lit(False)))
    sel = F.col("_sel")
    client = F.col("client")
    df = df.withColumns(
        {
            # The shape here; the timestamp itself after the stage boundary below (see there).
            "_time": F.when(sel & _time_shape_ok(F.col("time")), F.col("time")),
            "_ip": F.when(sel & client.rlike(_IPV4), client),
        }
    )
    # IPv6 text is checked after the stage boundary below (canonical text as it is, other spellings by Java).
    df = df.withColumn("_v6", F.when(sel & F.col("_ip").isNull() & client.contains(":"), client))
    first = (
        F.when(~F.col("_ok"), F.lit(_UNPARSED))
        .when(~sel, F.lit(FILTERED))
        .when(F.col("_time").isNull(), F.lit("bad_timestamp"))  # malformed (no such date: below)
        .when(F.col("_ip").isNull() & F.col("_v6").isNull(), F.lit("bad_ip"))
        .otherwise(F.lit(_CANDIDATE))
    )
    df = df.withColumn("_first", first)
    # The line travels on for every line that is bad or may still turn out bad (no such date, a bad
    # IPv6 address or entity): all but the filtered ones. Copying it is cheap next to parsing it.
    df = df.withColumn("_line", F.when(F.col("_first") != FILTERED, F.col("value")))
    # try_reflect has no generated code, so this projection ends the whole-stage-codegen stage. That
    # keeps each stage's generated method well under HotSpot's 8000-byte limit for JIT compilation (a
    # larger one is interpreted: 2x slower end to end, measured), which is why IPv6, the timestamp
    # and the entity are handled after it (tests/test_logparse.py checks the sizes).
    v6 = F.col("_v6")
    v6_ip = F.when(_is_canonical_v6(v6), v6).when(v6.rlike(_IPV6_CHARS), canonical_ipv6(v6))
    df = df.withColumn("_ip", F.coalesce(F.col("_ip"), F.when(v6.isNotNull(), v6_ip)))
    ip = F.col("_ip")
    candidate = F.col("_first") == _CANDIDATE
    df = df.withColumns(
        {
            "_ts": F.when(F.col("_time").isNotNull(), _timestamp_of_shaped(F.col("_time"))),
            "entity": F.when(candidate, entity_of),
        }
    )
    entity = F.col("entity")
    # Why a line did not parse: regexes over the whole line, only for those lines.
    reason = _structure_reason(F.col("_line"), max_line_length)
    outcome = (
        F.when(F.col("_first") == _UNPARSED, reason)
        .when(~candidate, F.col("_first"))
        .when(F.col("_ts").isNull(), F.lit("bad_timestamp"))  # no such date or time (31/Feb, 24:00)
        .when(ip.isNull(), F.lit("bad_ip"))  # IPv6 text that is no address
        .when(entity.isNull() | entity.isin("-", ""), F.lit("missing_entity"))
        .when(~F.is_valid_utf8(entity) | entity.rlike(_BINARY), F.lit("binary"))
        .otherwise(F.lit(KEPT))
    )
    # The octets here: an IPv4-mapped address comes back from Java as IPv4.
    df = df.withColumns({"outcome": outcome, "_octets": F.when(F.col("outcome") == KEPT, _ipv4_octets(ip))})
    kept = F.col("outcome") == KEPT
    bad = quarantined(F.col("outcome"))
    return df.select(
        "outcome",
        "source_file",
        F.when(kept, F.col("entity")).alias("entity"),
        F.when(kept, ip).alias("ip"),
        _ipv4_int(F.col("_octets")).alias("ip_int"),
        F.when(kept, F.when(ip.contains(":"), F.lit(6)).otherwise(F.lit(4))).alias("ip_version"),
        F.when(kept, F.col("_ts")).alias("ts"),
        # The UTC day from the epoch, not to_date(ts): to_date would use the session time zone.
        F.when(kept, F.date_from_unix_date(F.floor(F.unix_seconds(F.col("_ts")) / 86400).cast("int"))).alias("dt"),
        F.when(bad, F.substring(F.make_valid_utf8(F.col("_line")), 1, raw_max_chars)).alias("raw"),
    )
