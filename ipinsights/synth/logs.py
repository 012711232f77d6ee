"""Apache combined-format access logs: login events, other traffic and junk, formatted with Arrow kernels.

A *login event* is a line ``IP - user [dd/Mon/YYYY:HH:MM:SS +ZZZZ] "GET /login_success HTTP/1.1" 200 ...``
with a user other than ``-``; everything else is there to be filtered out: static files and pages fetched
anonymously, failed logins (``POST /login`` 401), forbidden ``/login_success`` (403), authenticated API
calls, scanners (403/404), and at ``junk_rate`` malformed lines (:data:`JUNK_KINDS`). Timestamps carry
the user's UTC offset; the true UTC instant is the log time minus the offset. The client address is
the login's text as the events hold it: a dotted quad, or RFC 5952 IPv6 text as Apache writes it
(``2a01:4f8:1c1c:abcd::1 - user_7 [...]``).

Lines are built column-wise: lookup tables of a few entries (dates, times of day, offsets, requests)
are gathered with ``take`` and joined with ``binary_join_element_wise``, so the cost per line is a few
memcpys; junk lines (a small share) are the only ones built one by one.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ipinsights.core.ip import ipv4_to_str
from ipinsights.synth.spec import STREAM_LOGS, SynthSpec, shard_bounds, shard_rng
from ipinsights.synth.world import entity_index

__all__ = [
    "COMBINED_LOG_RE",
    "JUNK_KINDS",
    "LOGIN_REQUEST",
    "MAX_LINE_BYTES",
    "format_lines",
    "lines_buffer",
    "log_file_name",
    "shard_log_pieces",
    "time_ordered",
    "write_access_logs",
    "write_pieces",
]

LOGIN_REQUEST = "GET /login_success HTTP/1.1"
#: A well-formed combined-format line (bytes; UA and referer may hold backslash-escaped quotes).
COMBINED_LOG_RE = re.compile(
    rb"^(?P<ip>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "
    rb'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}) (?P<size>\d+|-) '
    rb'"(?P<referer>(?:[^"\\]|\\.)*)" "(?P<ua>(?:[^"\\]|\\.)*)"$'
)
#: Lines longer than this are junk ("overlong"), whatever they hold.
MAX_LINE_BYTES = 8192
JUNK_KINDS: tuple[str, ...] = (
    "truncated",
    "bad_timestamp",
    "bad_ip",
    "missing_user",
    "wrong_field_count",
    "binary",
    "overlong",
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAY_S = 86_400

_CHROME = "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0"
_SAFARI = "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2"
_USER_AGENTS = (
    f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) {_CHROME} Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) {_SAFARI} Safari/605.1.15",
    f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) {_CHROME} Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) {_SAFARI} Mobile/15E148 Safari/604.1",
    f"Mozilla/5.0 (Linux; Android 14; Pixel 8) {_CHROME} Mobile Safari/537.36",
    f"Mozilla/5.0 (Linux; Android 13; SM-S918B) {_CHROME} Mobile Safari/537.36",
    f"Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) {_SAFARI} Mobile/15E148 Safari/604.1",
    f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) {_CHROME} Safari/537.36 Edg/120.0.0.0",
    # Last on purpose: the UA with escaped quotes (``\"``), given to about 1% of users.
    'Mozilla/5.0 (compatible; CorpSSO \\"Agent\\" 2.1; +https://sso.example.com)',
)
_BOT_AGENTS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "curl/8.4.0",
    "python-requests/2.31.0",
    'Mozilla/5.0 (compatible; \\"Scanner\\"/1.0)',
    "-",
)
_REFERERS = ("-", "https://www.example.com/", "https://www.example.com/login", "https://www.google.com/")


class _Noise(NamedTuple):
    """A kind of non-login request; ``foreign``: share coming from an unrelated address (bots, stuffing)."""

    name: str
    weight: float
    requests: tuple[str, ...]
    status: str
    anonymous: bool
    size: tuple[int, int]
    foreign: float


_STATIC = ("GET /static/app.js HTTP/1.1", "GET /static/style.css HTTP/1.1", "GET /img/logo.png HTTP/2.0")
_API = ("GET /api/v1/profile HTTP/1.1", "POST /api/v1/orders HTTP/1.1", "GET /api/v1/orders?page=2 HTTP/1.1")
_NOISE_KINDS = (
    _Noise("static", 0.38, _STATIC, "200", True, (800, 90_000), 0.0),
    _Noise(
        "page",
        0.12,
        ("GET / HTTP/1.1", "GET /index.html HTTP/1.1", "GET /login HTTP/1.1"),
        "200",
        True,
        (2_000, 9_000),
        0.0,
    ),
    _Noise("failed_login", 0.16, ("POST /login HTTP/1.1",), "401", False, (300, 600), 0.3),
    _Noise("forbidden_login", 0.03, (LOGIN_REQUEST,), "403", False, (200, 400), 0.5),
    _Noise("api", 0.15, _API, "200", False, (100, 5_000), 0.0),
    _Noise("logout", 0.04, ("GET /logout HTTP/1.1",), "302", False, (0, 1), 0.0),
    _Noise(
        "scanner",
        0.05,
        ("GET /wp-login.php HTTP/1.1", "GET /admin HTTP/1.1", "GET /.env HTTP/1.1"),
        "403",
        True,
        (150, 300),
        1.0,
    ),
    _Noise("not_found", 0.07, ("GET /favicon.ico HTTP/1.1", "GET /robots.txt HTTP/1.1"), "404", True, (150, 300), 0.0),
)
_BAD_TIMESTAMPS = (
    "32/Jan/2024:10:00:00 +0000",
    "01/Foo/2024:10:00:00 +0000",
    "01/Jan/2024:25:61:00 +0000",
    "2024-01-01T10:00:00Z",
    "01/Jan/2024:10:00:00",
    "-",
    "01/Jan/2024:10:00:00 +99999",
)
_BAD_IPS = (
    "300.1.2.3",
    "1.2.3",
    "1.2.3.4.5",
    "256.256.256.256",
    "10.0.0.-1",
    "a.b.c.d",
    "01.02.03.004",
    "2001:db8::1::2",
    "12345::1",
    "2a00:1:2:3:4:5:6:7:8",
    "2a0g::1",
)


def log_file_name(shard: int, spec: SynthSpec) -> str:
    return f"access-{shard:05d}.log" + (".gz" if spec.gzip else "")


# ---------------------------------------------------------------------------------------------
# Column-wise formatting.
# ---------------------------------------------------------------------------------------------

_TIME_OF_DAY: pa.StringArray | None = None


def _time_of_day_table() -> pa.StringArray:
    """``HH:MM:SS`` for every second of a day (86,400 strings, built once)."""
    global _TIME_OF_DAY
    if _TIME_OF_DAY is None:
        two = pa.array([f"{i:02d}" for i in range(60)], pa.string())
        s = np.arange(_DAY_S)
        h, m, sec = (two.take(pa.array(v)) for v in (s // 3600, s // 60 % 60, s % 60))
        _TIME_OF_DAY = pc.binary_join_element_wise(h, m, sec, ":")
    return _TIME_OF_DAY


def _offset_text(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def _lookup(values: np.ndarray, render) -> pa.Array:
    """Render each distinct value once in Python, then gather: one string per row without a row loop."""
    distinct, inverse = np.unique(values, return_inverse=True)
    table = pa.array([render(v) for v in distinct.tolist()], pa.string())
    return table.take(pa.array(inverse.reshape(-1)))


def format_lines(
    ip: pa.Array,
    user: pa.Array,
    ts_s: np.ndarray,
    offset_min: np.ndarray,
    request: pa.Array,
    status: pa.Array,
    size: pa.Array,
    referer: pa.Array,
    user_agent: pa.Array,
) -> pa.StringArray:
    """Combined-format lines, each ending in ``\\n`` (so the array's data buffer is the file's bytes)."""
    local = ts_s.astype(np.int64) + offset_min.astype(np.int64) * 60
    day = local // _DAY_S

    def date_text(d: int) -> str:
        ymd = np.datetime64(d, "D").astype(object)
        return f"{ymd.day:02d}/{_MONTHS[ymd.month - 1]}/{ymd.year}"

    date = _lookup(day, date_text)
    tod = _time_of_day_table().take(pa.array(local - day * _DAY_S))
    zone = _lookup(offset_min.astype(np.int64), _offset_text)
    lines = pc.binary_join_element_wise(
        ip,
        " - ",
        user,
        " [",
        date,
        ":",
        tod,
        " ",
        zone,
        '] "',
        request,
        '" ',
        status,
        " ",
        size,
        ' "',
        referer,
        '" "',
        user_agent,
        '"\n',
        "",
    )
    return lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines


_AGENTS = _USER_AGENTS + _BOT_AGENTS
_REQUESTS = (LOGIN_REQUEST, *(r for k in _NOISE_KINDS for r in k.requests))  # code 0: the login request
_STATUSES = ("200", *sorted({k.status for k in _NOISE_KINDS} - {"200"}))  # code 0: 200
_LOGIN_SIZE = 476


def _codes(rng: np.random.Generator, n: int, first: int, count: int) -> np.ndarray:
    return first + rng.integers(0, count, size=n)


def _user_agent_codes(user_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each user's own browser, and now and then a second device (a stable choice per user, no world needed)."""
    plain = len(_USER_AGENTS) - 1
    device = (rng.random(len(user_index)) < 0.1).astype(np.int64)
    ua = (user_index * 2_654_435_761 + device * 7) % plain
    ua[user_index % 97 == 0] = plain  # ~1% of users: a UA with escaped quotes
    return ua


def shard_log_pieces(spec: SynthSpec, logins: pa.Table, shard: int) -> tuple[list, dict[str, int]]:
    """One shard's log file (uncompressed) as a list of byte pieces to write in order, and counts by kind.

    ``logins`` are the shard's login events in time order (at least ``entity``, ``ip``, ``ts``,
    ``utc_offset_minutes``, and ``user_agent`` with ``devices: realistic``; injected attacks included).
    Other traffic is drawn around them (same users, addresses and moments; with ``devices: realistic`` the
    user's requests carry the agent of the login they are near, the bots' their own). Lines are coded as
    integers, put in time order, and formatted once; junk lines (mangled copies of real lines, or random
    bytes) are spliced in after the line they copy.
    """
    rng = shard_rng(spec.seed, shard, STREAM_LOGS)
    n_login = logins.num_rows
    ts = pc.cast(logins["ts"], pa.int64()).to_numpy() // 1_000_000
    user_index = entity_index(logins["entity"])
    n_noise = round(n_login * spec.noise_rate / (1 - spec.noise_rate)) if n_login else 0
    noise = _noise_rows(spec, rng, ts, user_index, n_noise)
    # Address texts: the logins', then those of the foreign requests; "ip" indexes them.
    foreign = np.flatnonzero(noise.pop("foreign"))
    foreign_ip = noise.pop("foreign_ip")[foreign]
    noise["ip"] = noise["src"].copy()
    noise["ip"][foreign] = n_login + np.arange(len(foreign))
    login_ip = logins["ip"].combine_chunks() if isinstance(logins["ip"], pa.ChunkedArray) else logins["ip"]
    addresses = pa.concat_arrays([login_ip.cast(pa.string()), ipv4_to_str(foreign_ip)])
    login = {
        "src": np.arange(n_login),
        "anonymous": np.zeros(n_login, bool),
        "ip": np.arange(n_login),
        "ts": ts,
        "request": np.zeros(n_login, np.int64),
        "status": np.zeros(n_login, np.int64),
        "size": np.full(n_login, _LOGIN_SIZE),
        "referer": np.zeros(n_login, np.int64),
        "agent": _user_agent_codes(user_index, rng),
    }
    order = np.argsort(np.concatenate([ts, noise["ts"]]), kind="stable")  # a log file is in time order
    rows = {k: np.concatenate([login[k], noise[k]])[order] for k in login}
    user = pc.if_else(pa.array(rows["anonymous"]), pa.scalar("-"), logins["entity"].take(pa.array(rows["src"])))
    agents = pa.array(_AGENTS, pa.string()).take(pa.array(rows["agent"]))
    if "user_agent" in logins.column_names:  # devices: realistic: the login's own agent, the bots' theirs
        # (the legacy codes above are still drawn: the other columns' random draws stay those of legacy)
        own = logins["user_agent"].take(pa.array(rows["src"]))
        agents = pc.if_else(pa.array(rows["agent"] >= len(_USER_AGENTS)), agents, own)
    lines = format_lines(
        addresses.take(pa.array(rows["ip"])),
        user,
        rows["ts"],
        logins["utc_offset_minutes"].to_numpy()[rows["src"]],
        pa.array(_REQUESTS, pa.string()).take(pa.array(rows["request"])),
        pa.array(_STATUSES, pa.string()).take(pa.array(rows["status"])),
        pc.cast(pa.array(rows["size"]), pa.string()),
        pa.array(_REFERERS, pa.string()).take(pa.array(rows["referer"])),
        agents,
    )
    n_junk = round(len(lines) * spec.junk_rate / (1 - spec.junk_rate)) if len(lines) else 0
    after, junk, junk_counts = _junk_lines(rng, lines, n_junk)
    pieces = _splice(lines, after, junk)
    counts = {"login_lines": n_login, "noise_lines": n_noise, "junk_lines": n_junk, **junk_counts}
    counts["log_bytes"] = sum(len(p) for p in pieces)
    return pieces, counts


def _noise_rows(
    spec: SynthSpec, rng: np.random.Generator, ts: np.ndarray, user_index: np.ndarray, n: int
) -> dict[str, np.ndarray]:
    """Non-login traffic around the logins, as codes: same users, addresses and moments, other requests.

    A request comes from the address of the login ``src`` it is near, or where ``foreign`` from the
    IPv4 address ``foreign_ip``.
    """
    weights = np.array([k.weight for k in _NOISE_KINDS])
    kind = np.minimum(
        np.searchsorted(np.cumsum(weights) / weights.sum(), rng.random(n), side="right"), len(weights) - 1
    )
    src = rng.integers(0, max(len(ts), 1), size=n)  # the login this request is "near"
    anonymous = np.array([k.anonymous for k in _NOISE_KINDS])[kind]
    n_requests = np.array([len(k.requests) for k in _NOISE_KINDS])
    first_request = 1 + np.concatenate([[0], np.cumsum(n_requests)[:-1]])
    lo, hi = (np.array([k.size[i] for k in _NOISE_KINDS])[kind] for i in (0, 1))
    # Failed logins and scanners partly come from someone else's address (stuffing, bots).
    foreign = rng.random(n) < np.array([k.foreign for k in _NOISE_KINDS])[kind]
    bot = anonymous & (rng.random(n) < 0.3)
    agent = np.where(bot, _codes(rng, n, len(_USER_AGENTS), len(_BOT_AGENTS)), _user_agent_codes(user_index[src], rng))
    return {
        "src": src,
        "anonymous": anonymous,
        "foreign": foreign,
        "foreign_ip": rng.integers(1 << 24, 0xDF000000, size=n),
        # Wrapped into the period (rather than clipped, which would pile requests up on its edges).
        "ts": spec.start_epoch_s
        + (ts[src] + rng.integers(-600, 600, size=n) - spec.start_epoch_s) % (spec.days * _DAY_S)
        if len(ts)
        else np.zeros(n, np.int64),
        "request": first_request[kind] + (rng.random(n) * n_requests[kind]).astype(np.int64),
        "status": np.array([_STATUSES.index(k.status) for k in _NOISE_KINDS])[kind],
        "size": lo + (rng.random(n) * (hi - lo)).astype(np.int64),
        "referer": _codes(rng, n, 0, len(_REFERERS)),
        "agent": agent,
    }


def _splice(lines: pa.Array, after: np.ndarray, junk: list[bytes]) -> list[pa.Buffer | bytes]:
    """The lines' bytes with each junk line inserted after line ``after[i]`` (``after`` sorted)."""
    data = lines_buffer(lines)
    if not junk:
        return [data]
    offsets = _offsets(lines)
    ends = (offsets[after + 1] - offsets[0]).tolist()
    pieces: list[pa.Buffer | bytes] = []
    start = 0
    for end, extra in zip(ends, junk, strict=True):
        pieces.extend((data.slice(start, end - start), extra))
        start = end
    pieces.append(data.slice(start))
    return pieces


def _junk_lines(rng: np.random.Generator, lines: pa.Array, n: int) -> tuple[np.ndarray, list[bytes], dict[str, int]]:
    """``n`` malformed lines and the (sorted) rows they follow; kinds dealt round-robin so that all appear.

    Built one by one in Python: junk is a small share of the lines (``junk_rate``), so this loop is
    over junk lines only, never over events.
    """
    first = int(rng.integers(0, len(JUNK_KINDS)))
    kinds = [JUNK_KINDS[(first + i) % len(JUNK_KINDS)] for i in range(n)]
    after = np.sort(rng.integers(0, max(len(lines), 1), size=n))
    templates = lines.take(pa.array(after)).to_pylist() if n else []
    junk = [_mangle(rng, kind, line[:-1].encode()) + b"\n" for kind, line in zip(kinds, templates, strict=True)]
    return after, junk, {f"junk_{k}": kinds.count(k) for k in JUNK_KINDS}


def _mangle(rng: np.random.Generator, kind: str, line: bytes) -> bytes:
    """One malformed line of ``kind`` made from the well-formed ``line`` (without its newline)."""
    ip, _, rest = line.partition(b" ")
    head, _, tail = line.partition(b"] ")
    if kind == "truncated":  # cut before the closing quote, as a crashed writer leaves it
        return line[: int(rng.integers(8, len(line) - 1))]
    if kind == "bad_timestamp":
        bad = _BAD_TIMESTAMPS[int(rng.integers(0, len(_BAD_TIMESTAMPS)))].encode()
        return head[: head.index(b"[") + 1] + bad + b"] " + tail
    if kind == "bad_ip":
        return _BAD_IPS[int(rng.integers(0, len(_BAD_IPS)))].encode() + b" " + rest
    if kind == "missing_user":
        return ip + b" - " + line.split(b" ", 3)[3]
    if kind == "wrong_field_count":  # status and size gone, or only the first three fields
        return re.sub(rb'" \d{3} (\d+|-) "', b'" "', line) if rng.random() < 0.5 else b" ".join(line.split(b" ")[:3])
    if kind == "binary":
        raw = rng.integers(0, 256, size=int(rng.integers(20, 200)), dtype=np.uint8)
        raw[(raw == 10) | (raw == 13)] = 0xFF  # no line breaks inside a line
        return raw.tobytes()
    # overlong: a well-formed request for a very long URL (414), longer than MAX_LINE_BYTES
    query = b"A" * int(rng.integers(MAX_LINE_BYTES, 8 * MAX_LINE_BYTES))
    return head + b'] "GET /search?q=' + query + b' HTTP/1.1" 414 0 "-" "-"'


def lines_buffer(lines: pa.Array) -> pa.Buffer:
    """The concatenated bytes of a (binary/string) array of newline-terminated lines: no copy."""
    if len(lines) == 0:
        return pa.py_buffer(b"")
    offsets = _offsets(lines)
    return lines.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


def _offsets(lines: pa.Array) -> np.ndarray:
    """The ``len + 1`` value offsets of a string/binary array (slices included)."""
    return np.frombuffer(lines.buffers()[1], np.int32)[lines.offset : lines.offset + len(lines) + 1]


def write_pieces(path: Path, pieces: list, spec: SynthSpec) -> None:
    """Write a log file from its pieces (gzip with a fixed header: mtime 0, no name, so bytes are reproducible)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as raw:
        if spec.gzip:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=spec.gzip_level, mtime=0) as gz:
                for piece in pieces:
                    gz.write(memoryview(piece))
        else:
            for piece in pieces:
                raw.write(memoryview(piece))
    tmp.replace(path)


def write_access_logs(
    events: pa.Table, out_dir: str | Path, spec: SynthSpec, attacks: pa.Table | None = None
) -> list[Path]:
    """Write ``events`` (and ``attacks``, if given, as extra logins) as ``out_dir/access-NNNNN.log[.gz]``.

    One file per shard (``spec.n_files``); a user's lines all go to the file of their shard, as with
    sticky load balancing. Returns the paths in shard order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bounds = shard_bounds(spec.users, spec.n_files)
    logins = events.select(_login_columns(events))
    if attacks is not None:
        logins = pa.concat_tables([logins, attacks.select(_login_columns(events))])
    shard = np.searchsorted(bounds, entity_index(logins["entity"]), side="right") - 1
    paths = []
    for s in range(spec.n_files):
        pieces, _ = shard_log_pieces(spec, time_ordered(logins.filter(pa.array(shard == s))), s)
        path = out_dir / log_file_name(s, spec)
        write_pieces(path, pieces, spec)
        paths.append(path)
    return paths


def time_ordered(logins: pa.Table) -> pa.Table:
    """Login rows in time order (stable: ties keep their order), as a log file holds them."""
    logins = logins.select(_login_columns(logins))
    return logins.take(pc.sort_indices(logins, [("ts", "ascending")]))


_LOGIN_COLUMNS = ("entity", "ip", "ts", "utc_offset_minutes")


def _login_columns(table: pa.Table) -> list[str]:
    """What a log line needs of a login: :data:`_LOGIN_COLUMNS`, and its ``user_agent`` where it has one."""
    return [*_LOGIN_COLUMNS, *(["user_agent"] if "user_agent" in table.column_names else [])]
