"""User agents: real strings parsed to family, OS and device type; the ingest keeps them, in both engines."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ipinsights.core.useragent import DEVICE_TYPES, parse_user_agent, parse_user_agents

_WEBKIT = "AppleWebKit/537.36 (KHTML, like Gecko)"
_IOS = "AppleWebKit/605.1.15 (KHTML, like Gecko)"
#: (user agent, family, OS, device type): browsers on each desktop and mobile OS, apps, tools, bots, junk.
REAL = [
    (
        f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) {_WEBKIT} Chrome/131.0.0.0 Safari/537.36",
        "Chrome",
        "Windows",
        "desktop",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Firefox",
        "Windows",
        "desktop",
    ),
    (
        f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) {_WEBKIT} Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
        "Edge",
        "Windows",
        "desktop",
    ),
    (
        f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) {_WEBKIT} Chrome/131.0.0.0 Safari/537.36 OPR/115.0.0.0",
        "Opera",
        "Windows",
        "desktop",
    ),
    (
        f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) {_IOS} Version/18.1 Safari/605.1.15",
        "Safari",
        "Mac OS X",
        "desktop",
    ),
    (
        f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) {_WEBKIT} Chrome/131.0.0.0 Safari/537.36",
        "Chrome",
        "Mac OS X",
        "desktop",
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.7; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Firefox",
        "Mac OS X",
        "desktop",
    ),
    (f"Mozilla/5.0 (X11; Linux x86_64) {_WEBKIT} Chrome/131.0.0.0 Safari/537.36", "Chrome", "Linux", "desktop"),
    ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0", "Firefox", "Ubuntu", "desktop"),
    (
        f"Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) {_WEBKIT} Chrome/131.0.0.0 Safari/537.36",
        "Chrome",
        "Chrome OS",
        "desktop",
    ),
    (
        f"Mozilla/5.0 (Linux; Android 10; K) {_WEBKIT} Chrome/131.0.0.0 Mobile Safari/537.36",
        "Chrome",
        "Android",
        "mobile",
    ),
    (
        f"Mozilla/5.0 (Linux; Android 14; SM-S928B) {_WEBKIT} SamsungBrowser/26.0 Chrome/122.0.0.0 "
        "Mobile Safari/537.36",
        "Samsung Internet",
        "Android",
        "mobile",
    ),
    ("Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0", "Firefox", "Android", "mobile"),
    (
        f"Mozilla/5.0 (Linux; Android 10; K) {_WEBKIT} Chrome/131.0.0.0 Mobile Safari/537.36 EdgA/131.0.0.0",
        "Edge",
        "Android",
        "mobile",
    ),
    (
        f"Mozilla/5.0 (iPhone; CPU iPhone OS 18_1_1 like Mac OS X) {_IOS} Version/18.1.1 Mobile/15E148 Safari/604.1",
        "Safari",
        "iOS",
        "mobile",
    ),
    (
        f"Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) {_IOS} CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1",
        "Chrome",
        "iOS",
        "mobile",
    ),
    (
        f"Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) {_IOS} FxiOS/133.0 Mobile/15E148 Safari/605.1.15",
        "Firefox",
        "iOS",
        "mobile",
    ),
    (
        f"Mozilla/5.0 (iPad; CPU OS 18_1 like Mac OS X) {_IOS} Version/18.1 Mobile/15E148 Safari/604.1",
        "Safari",
        "iOS",
        "tablet",
    ),
    (
        f"Mozilla/5.0 (Linux; Android 13; SM-X710) {_WEBKIT} Chrome/131.0.0.0 Safari/537.36",
        "Chrome",
        "Android",
        "tablet",
    ),
    # Mobile apps: an in-app browser, an Android WebView, an iOS app's own client, a bare Android client.
    (
        f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) {_IOS} Mobile/15E148 Instagram 357.0.0.25.101 "
        "(iPhone15,3; iOS 17_6; en_US; en; scale=3.00; 1290x2796; 658234111)",
        "Instagram",
        "iOS",
        "mobile",
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SM-A546B Build/UP1A.231005.007; wv) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Version/4.0 Chrome/131.0.6778.81 Mobile Safari/537.36",
        "Chrome Mobile WebView",
        "Android",
        "mobile",
    ),
    ("MyBank/5.2.1 CFNetwork/1494.0.7 Darwin/23.4.0", "MyBank", "iOS", "mobile"),
    ("Dalvik/2.1.0 (Linux; U; Android 13; SM-A536B Build/TP1A.220624.014)", "Android", "Android", "mobile"),
    # Tools and bots.
    ("curl/8.5.0", "curl", "Other", "other"),
    ("python-requests/2.32.3", "Python Requests", "Other", "other"),
    ("okhttp/4.12.0", "okhttp", "Other", "other"),
    ("Go-http-client/1.1", "Go-http-client", "Other", "other"),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "Googlebot", "Other", "bot"),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", "bingbot", "Other", "bot"),
    # Empty, absent and malformed.
    ("", "Other", "Other", "other"),
    ("-", "Other", "Other", "other"),
    ("Mozilla", "Other", "Other", "other"),
    ("() { :; }; /bin/bash -c 'id'", "Other", "Other", "other"),
    ("\x00\x01junk", "Other", "Other", "other"),
    ("A" * 5000, "Other", "Other", "other"),
]


@pytest.mark.parametrize(("agent", "family", "os", "device"), REAL, ids=[a[:40] for a, *_ in REAL])
def test_a_real_user_agent_parses_to_its_family_os_and_device_type(agent, family, os, device):
    assert tuple(parse_user_agent(agent)) == (family, os, device)


def test_a_batch_is_parsed_once_per_distinct_string_and_keeps_its_nulls():
    agents = [a for a, *_ in REAL]
    batch = pa.array([*agents, None, *agents[:5]] * 3, pa.string())
    parse_user_agent.cache_clear()
    family, os, device = parse_user_agents(batch)
    assert parse_user_agent.cache_info().misses == len(set(agents))  # each distinct string parsed once
    expected = {a: (f, o, d) for a, f, o, d in REAL}
    got = list(zip(family.to_pylist(), os.to_pylist(), device.to_pylist(), strict=True))
    assert got == [expected[a] if a is not None else (None, None, None) for a in batch.to_pylist()]
    assert set(device.dictionary.to_pylist()) <= set(DEVICE_TYPES)
    assert len(family.dictionary) == len(set(family.to_pylist()) - {None})  # no value twice


# --------------------------------------------------------------------------- ingest


_LINE = '10.0.{i}.1 - user_{i} [10/Oct/2026:12:{i:02d}:00 +0000] "GET /login_success HTTP/1.1" 200 476'
_CHROME = REAL[0][0]
_IPHONE = REAL[14][0]
#: (line, outcome, stored agent, family, OS, device): with and without an agent, escaped quotes, control
#: characters, too long; a filtered line keeps none.
LINES = [
    (f'{_LINE} "-" "{_CHROME}"', "kept", _CHROME, "Chrome", "Windows", "desktop"),
    (f'{_LINE} "https://www.example.com/\\"x\\"" "{_IPHONE}"', "kept", _IPHONE, "Safari", "iOS", "mobile"),
    (_LINE, "kept", None, None, None, None),  # Common Log Format: no agent
    (f'{_LINE} "-" "-"', "kept", "-", "Other", "Other", "other"),
    (f'{_LINE} "-" ""', "kept", "", "Other", "Other", "other"),
    (f'{_LINE} "-" "CorpSSO \\"Agent\\" 2.1"', "kept", 'CorpSSO "Agent" 2.1', "Other", "Other", "other"),
    (f'{_LINE} "-" "curl/8.5.0\x07"', "kept", "curl/8.5.0\\x07", "curl", "Other", "other"),
    (f'{_LINE} "-" "Mozilla/5.0 (\u00e9t\u00e9)"', "kept", "Mozilla/5.0 (\u00e9t\u00e9)", "Other", "Other", "other"),
    (f'{_LINE} "-" "{"x" * 1025}"', "user_agent_too_long", None, None, None, None),
    (f'{_LINE} "-" "{"x" * 1024}"', "kept", "x" * 1024, "Other", "Other", "other"),
    (f'{_LINE} "-" "python-requests/2.32.3"'.replace("login_success", "static/app.js"), "filtered", *[None] * 4),
]


def test_the_classifier_keeps_each_events_user_agent():
    from ipinsights.ingest.logparse import classify_batch

    lines = [line.format(i=i) for i, (line, *_) in enumerate(LINES)]
    rows = classify_batch(pa.array(lines)).to_pylist()
    got = [(r["outcome"], r["user_agent"], r["ua_family"], r["ua_os"], r["ua_device"]) for r in rows]
    assert got == [tuple(rest) for _, *rest in LINES]
    assert rows[8]["raw"] == lines[8]  # the too-long agent's line is in the quarantine, whole
    common = classify_batch(pa.array([_LINE.format(i=1), _LINE.format(i=2)])).to_pylist()  # no agent at all
    assert [(r["outcome"], r["user_agent"], r["ua_device"]) for r in common] == [("kept", None, None)] * 2


@pytest.mark.oldest_spark
@pytest.mark.slow
@pytest.mark.spark
def test_both_engines_keep_the_user_agent_and_merge_with_days_written_before_it(spark, tmp_path):
    """Both engines store the same agents (with and without one, escaped, controls, too long); a day
    written before the agent's columns existed keeps its rows (null agents) when a new file joins it."""
    from ipinsights.core.config import load_config
    from ipinsights.ingest.job import IngestConfig, run_ingest
    from ipinsights.storage.events import read_events

    lines = [line.format(i=i) for i, (line, *_) in enumerate(LINES)]
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "new.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    got = {}
    for engine in ("arrow", "spark"):
        table = tmp_path / engine
        old = table / "dt=2026-10-10"
        old.mkdir(parents=True)
        # A day of the table as the ingest wrote it before the user agent's columns.
        columns = {"entity": ["old"], "ip": ["10.9.9.9"], "ip_int": pa.array([168364553], pa.int64())}
        columns |= {"ip_version": pa.array([4], pa.int32())}
        ts = pa.array([1791633600 * 1_000_000], pa.timestamp("us", tz="UTC"))
        pq.write_table(pa.table({**columns, "ts": ts, "source_file": ["file:/gone.log"]}), old / "part-0.parquet")
        overrides = {"inputs": str(logs / "new.log"), "output": str(table), "engine": engine, "max_bad_ratio": "0.5"}
        summary = run_ingest(spark, load_config(IngestConfig, "conf/ingest.yml", overrides))
        assert summary["quarantined_by_reason"] == {"user_agent_too_long": 1}
        assert summary["days_merged"] == ["2026-10-10"]
        rows = read_events(spark, str(table)).collect()
        got[engine] = sorted(
            ((r.entity, r.user_agent, r.ua_family, r.ua_os, r.ua_device) for r in rows), key=lambda r: r[0]
        )
    expected = [("old", None, None, None, None)]
    expected += [(f"user_{i}", *rest) for i, (_, outcome, *rest) in enumerate(LINES) if outcome == "kept"]
    assert got["arrow"] == got["spark"] == sorted(expected, key=lambda r: r[0])
