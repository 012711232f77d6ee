"""Apache combined-format access logs: login events, other traffic and junk, formatted with Arrow kernels.

A *login event* is a line ``IP - user [dd/Mon/YYYY:HH:MM:SS +ZZZZ] "GET /login_success HTTP/1.1" 200 ...``
with a user other than ``-``; everything else is there to be filtered out: static files and pages fetched
anonymously, failed logins (``POST /login`` 401), forbidden ``/login_success`` (403), authenticated API
calls, scanners (403/404), and at ``junk_rate`` malformed lines (:data:`JUNK_KINDS`). Timestamps carry
the user's UTC offset; the true UTC instant is the log time minus the offset.

Lines are built column-wise: lookup tables of a few entries (dates, times of day, offsets, requests)
are gathered with ``take`` and joined with ``binary_join_element_wise``, so the cost per line is a few
memcpys; junk lines (a small share) are the only ones built one by one.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ipinsights.ip import ipv4_to_str
from ipinsights.synth.spec import STREAM_LOGS, SynthSpec, shard_bounds, shard_rng
from ipinsights.synth.world import entity_index

__all__ = [
    "COMBINED_LOG_RE",
    "JUNK_KINDS",
    "LOGIN_REQUEST",
    "MAX_LINE_BYTES",
    "format_lines",
    "log_file_name",
    "shard_log_bytes",
    "time_ordered",
    "write_access_logs",
]

LOGIN_REQUEST = "GET /login_success HTTP/1.1"
#: A well-formed combined-format line (bytes; UA and referer may hold backslash-escaped quotes).
COMBINED_LOG_RE = re.compile(
    rb'^(?P<ip>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] '
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

_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
    "Mozilla/5.0 (compatible; CorpSSO \\\"Agent\\\" 2.1; +https://sso.example.com)",
)  # fmt: skip
_BOT_AGENTS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "curl/8.4.0",
    "python-requests/2.31.0",
    "Mozilla/5.0 (compatible; \\\"Scanner\\\"/1.0)",
    "-",
)
_REFERERS = ("-", "https://www.example.com/", "https://www.example.com/login", "https://www.google.com/")

# Other traffic: (name, weight, requests, status, anonymous, size range, random source address share).
_NOISE_KINDS = (
    ("static", 0.38, ("GET /static/app.js HTTP/1.1", "GET /static/style.css HTTP/1.1", "GET /img/logo.png HTTP/2.0",
                      "GET /static/vendor.js HTTP/2.0"), "200", True, (800, 90_000), 0.0),
    ("page", 0.12, ("GET / HTTP/1.1", "GET /index.html HTTP/1.1", "GET /login HTTP/1.1"), "200", True, (2_000, 9_000), 0.0),
    ("failed_login", 0.16, ("POST /login HTTP/1.1",), "401", False, (300, 600), 0.3),
    ("forbidden_login", 0.03, (LOGIN_REQUEST,), "403", False, (200, 400), 0.5),
    ("api", 0.15, ("GET /api/v1/profile HTTP/1.1", "POST /api/v1/orders HTTP/1.1", "GET /api/v1/orders?page=2 HTTP/1.1"),
     "200", False, (100, 5_000), 0.0),
    ("logout", 0.04, ("GET /logout HTTP/1.1",), "302", False, (0, 1), 0.0),
    ("scanner", 0.05, ("GET /wp-login.php HTTP/1.1", "GET /admin HTTP/1.1", "GET /.env HTTP/1.1"), "403", True,
     (150, 300), 1.0),
    ("not_found", 0.07, ("GET /favicon.ico HTTP/1.1", "GET /apple-touch-icon.png HTTP/1.1"), "404", True, (150, 300), 0.0),
)  # fmt: skip
_BAD_TIMESTAMPS = (
    "32/Jan/2024:10:00:00 +0000", "01/Foo/2024:10:00:00 +0000", "01/Jan/2024:25:61:00 +0000",
    "2024-01-01T10:00:00Z", "01/Jan/2024:10:00:00", "-", "01/Jan/2024:10:00:00 +99999",
)  # fmt: skip
_BAD_IPS = ("300.1.2.3", "1.2.3", "1.2.3.4.5", "256.256.256.256", "10.0.0.-1", "a.b.c.d", "01.02.03.004")


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
    return pc.binary_join_element_wise(
        ip, " - ", user, " [", date, ":", tod, " ", zone, '] "', request, '" ', status, " ", size,
        ' "', referer, '" "', user_agent, '"\n', "",
    )  # fmt: skip


def _pick(rng: np.random.Generator, choices: tuple[str, ...], n: int) -> pa.Array:
    return pa.array(choices, pa.string()).take(pa.array(rng.integers(0, len(choices), size=n)))


def _user_agents(user_index: np.ndarray, rng: np.random.Generator) -> pa.Array:
    """Each user's own browser, and now and then a second device (a stable choice per user, no world needed)."""
    device = (rng.random(len(user_index)) < 0.1).astype(np.int64)
    ua = (user_index * 2_654_435_761 + device * 7) % (len(_USER_AGENTS) - 1)
    ua[user_index % 97 == 0] = len(_USER_AGENTS) - 1  # ~1% of users: a UA with escaped quotes
    return pa.array(_USER_AGENTS, pa.string()).take(pa.array(ua))


def shard_log_bytes(spec: SynthSpec, logins: pa.Table, shard: int) -> tuple[pa.Buffer, dict[str, int]]:
    """The bytes of one shard's log file (uncompressed) and line counts by kind.

    ``logins`` are the shard's login events (at least ``entity``, ``ip``, ``ts``,
    ``utc_offset_minutes``; injected attacks included). Other traffic is drawn around them (same
    users, addresses and moments); junk lines are mangled copies of real lines or random bytes.
    """
    rng = shard_rng(spec.seed, shard, STREAM_LOGS)
    n_login = logins.num_rows
    ts = pc.cast(logins["ts"], pa.int64()).to_numpy() // 1_000_000
    offset = logins["utc_offset_minutes"].to_numpy()
    user_index = entity_index(logins["entity"])
    login_lines = format_lines(
        logins["ip"], logins["entity"], ts, offset, LOGIN_REQUEST, "200", "476", "-", _user_agents(user_index, rng)
    )
    n_noise = round(n_login * spec.noise_rate / (1 - spec.noise_rate)) if n_login else 0
    noise_lines, noise_ts = _noise_lines(spec, rng, logins, ts, offset, user_index, n_noise)
    lines = pa.chunked_array([login_lines.cast(pa.binary()), noise_lines.cast(pa.binary())], pa.binary())
    line_ts = np.concatenate([ts, noise_ts])
    n_junk = round(len(line_ts) * spec.junk_rate / (1 - spec.junk_rate)) if len(line_ts) else 0
    junk, junk_ts, junk_counts = _junk_lines(rng, lines, line_ts, n_junk)
    everything = pa.chunked_array([*lines.chunks, junk], pa.binary())
    order = np.argsort(np.concatenate([line_ts, junk_ts]), kind="stable")  # a log file is in time order
    out = everything.take(pa.array(order)).combine_chunks()
    counts = {"login_lines": n_login, "noise_lines": n_noise, "junk_lines": n_junk, **junk_counts}
    return _data_buffer(out), counts


def _noise_lines(
    spec: SynthSpec,
    rng: np.random.Generator,
    logins: pa.Table,
    ts: np.ndarray,
    offset: np.ndarray,
    user_index: np.ndarray,
    n: int,
) -> tuple[pa.Array, np.ndarray]:
    """Non-login traffic around the logins: same users, addresses and moments, other requests."""
    if n == 0:
        return pa.array([], pa.string()), np.zeros(0, np.int64)
    weights = np.array([k[1] for k in _NOISE_KINDS])
    kind = np.searchsorted(np.cumsum(weights) / weights.sum(), rng.random(n), side="right")
    kind = np.minimum(kind, len(_NOISE_KINDS) - 1)
    src = rng.integers(0, len(ts), size=n)  # the login this request is "near"
    period = (spec.start_epoch_s, spec.start_epoch_s + spec.days * _DAY_S - 1)
    line_ts = np.clip(ts[src] + rng.integers(-600, 600, size=n), *period)
    ip = logins["ip_int"].to_numpy()[src]
    user = pc.if_else(
        pa.array(np.array([k[4] for k in _NOISE_KINDS])[kind]), pa.scalar("-"), logins["entity"].take(pa.array(src))
    )
    # Per kind: request, status, size and whether the source address is someone else's (bots, stuffing).
    requests = [r for k in _NOISE_KINDS for r in k[2]]
    first_request = np.cumsum([0] + [len(k[2]) for k in _NOISE_KINDS])
    n_requests = np.diff(first_request)
    request = pa.array(requests, pa.string()).take(
        pa.array(first_request[kind] + (rng.random(n) * n_requests[kind]).astype(np.int64))
    )
    status = pa.array([k[3] for k in _NOISE_KINDS], pa.string()).take(pa.array(kind))
    lo = np.array([k[5][0] for k in _NOISE_KINDS])[kind]
    hi = np.array([k[5][1] for k in _NOISE_KINDS])[kind]
    size = pc.cast(pa.array(lo + (rng.random(n) * (hi - lo)).astype(np.int64)), pa.string())
    foreign = rng.random(n) < np.array([k[6] for k in _NOISE_KINDS])[kind]
    ip[foreign] = rng.integers(1 << 24, 0xDF000000, size=int(foreign.sum()))
    bot = np.array([k[4] for k in _NOISE_KINDS])[kind] & (rng.random(n) < 0.3)
    agents = pc.if_else(
        pa.array(bot), _pick(rng, _BOT_AGENTS, n), _user_agents(user_index[src], rng)
    )
    lines = format_lines(
        ipv4_to_str(ip), user, line_ts, offset[src], request, status, size, _pick(rng, _REFERERS, n), agents
    )
    return lines, line_ts


def _junk_lines(
    rng: np.random.Generator, lines: pa.ChunkedArray, line_ts: np.ndarray, n: int
) -> tuple[pa.Array, np.ndarray, dict[str, int]]:
    """``n`` malformed lines, the kinds dealt round-robin from a random start so that all appear.

    Built one by one in Python: junk is a small share of the lines (``junk_rate``), so this loop is
    over junk lines only, never over events.
    """
    if n == 0:
        return pa.array([], pa.binary()), np.zeros(0, np.int64), {f"junk_{k}": 0 for k in JUNK_KINDS}
    first = int(rng.integers(0, len(JUNK_KINDS)))
    kinds = [JUNK_KINDS[(first + i) % len(JUNK_KINDS)] for i in range(n)]
    src = rng.integers(0, len(line_ts), size=n)
    templates = lines.take(pa.array(src)).to_pylist()
    out = [_mangle(rng, kind, line[:-1]) + b"\n" for kind, line in zip(kinds, templates, strict=True)]
    counts = {f"junk_{k}": kinds.count(k) for k in JUNK_KINDS}
    return pa.array(out, pa.binary()), line_ts[src], counts


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


def _data_buffer(lines: pa.Array) -> pa.Buffer:
    """The concatenated bytes of a (binary/string) array of newline-terminated lines: no copy."""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=len(lines) + 1, offset=lines.offset * 4)
    return lines.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0])) if len(lines) else pa.py_buffer(b"")


def write_bytes(path: Path, data: pa.Buffer, spec: SynthSpec) -> None:
    """Write a log file in one go (gzip with a fixed header: mtime 0, no name, so that bytes are reproducible)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb", buffering=0) as raw:
        if spec.gzip:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=spec.gzip_level, mtime=0) as gz:
                gz.write(memoryview(data))
        else:
            raw.write(memoryview(data))
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
    logins = events.select(list(_LOGIN_COLUMNS))
    if attacks is not None:
        logins = pa.concat_tables([logins, attacks.select(list(_LOGIN_COLUMNS))])
    shard = np.searchsorted(bounds, entity_index(logins["entity"]), side="right") - 1
    paths = []
    for s in range(spec.n_files):
        data, _ = shard_log_bytes(spec, time_ordered(logins.filter(pa.array(shard == s))), s)
        path = out_dir / log_file_name(s, spec)
        write_bytes(path, data, spec)
        paths.append(path)
    return paths


def time_ordered(logins: pa.Table) -> pa.Table:
    """Login rows in time order (stable: ties keep their order), as a log file holds them."""
    logins = logins.select(list(_LOGIN_COLUMNS))
    return logins.take(pc.sort_indices(logins, [("ts", "ascending")]))


_LOGIN_COLUMNS = ("entity", "ip", "ip_int", "ts", "utc_offset_minutes")
