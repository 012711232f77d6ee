"""Log line parsing and classification: Arrow arrays for the rules, a Spark session for the UDF."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from ipinsights.ingest.logparse import EntityOptions, LineLimits, LineRules, ResourceFilter

OK = '1.2.3.4 - bob [10/Oct/2026:23:30:00 -0500] "GET /login_success HTTP/1.1" 200 476 "-" "Mozilla/5.0"'


DEFAULT_RULES = LineRules()


def classify(lines, rules: LineRules = DEFAULT_RULES) -> list[dict]:
    """classify_batch's rows, with the UTC time and day as datetimes (as the Spark wrapper gives them)."""
    from ipinsights.ingest import logparse

    rows = logparse.classify_batch(pa.array(lines, pa.string()), rules).to_pylist()
    for r in rows:
        s = r.pop("epoch_s")
        r["ts"] = None if s is None else dt.datetime(1970, 1, 1) + dt.timedelta(seconds=s)
        r["dt"] = None if s is None else r["ts"].date()
    return rows


def test_timezone_offset_is_converted_to_utc_day():
    (row,) = classify([OK])
    assert row["outcome"] == "kept"
    assert row["ts"] == dt.datetime(2026, 10, 11, 4, 30)  # session time zone is UTC
    assert row["dt"] == dt.date(2026, 10, 11)
    assert (row["entity"], row["ip"], row["ip_int"], row["ip_version"]) == ("bob", "1.2.3.4", 16909060, 4)
    assert row["raw"] is None  # raw marks quarantined lines only (the ingest task relies on it)


def test_offsets_and_calendar():
    cases = {
        "01/Jan/2026:00:15:00 +0130": dt.datetime(2025, 12, 31, 22, 45),
        "29/Feb/2028:12:00:00 +0000": dt.datetime(2028, 2, 29, 12, 0),
        "31/Dec/2026:20:00:00 -0430": dt.datetime(2027, 1, 1, 0, 30),
    }
    rows = classify([OK.replace("10/Oct/2026:23:30:00 -0500", stamp) for stamp in cases])
    assert [(r["ts"], r["dt"]) for r in rows] == [(utc, utc.date()) for utc in cases.values()]


def test_escaped_quotes_and_common_format():
    lines = [
        '5.6.7.8 - al [10/Oct/2026:10:00:00 +0000] "GET /login_success?a=\\"x\\" HTTP/1.1" 200 1 "-" "UA \\"q\\" \\\\"',
        '5.6.7.8 - ann [10/Oct/2026:10:00:00 +0000] "GET /login_success HTTP/1.1" 200 -',
    ]
    rows = classify(lines)
    assert [r["outcome"] for r in rows] == ["kept", "kept"]
    rows = classify(lines[:1], LineRules(entity=EntityOptions("user_agent")))
    assert rows[0]["entity"] == 'UA "q" \\'


def test_ipv6_client_is_canonical():
    rows = classify(
        [
            OK.replace("1.2.3.4", "2001:0DB8:0000:0000:0000:0000:0000:0001"),
            OK.replace("1.2.3.4", "1:0:0:2:0:0:0:4"),
            OK.replace("1.2.3.4", "::ffff:10.0.0.1"),
            OK.replace("1.2.3.4", "fe80::1%eth0"),
        ],
    )
    assert [(r["ip"], r["ip_version"], r["ip_int"]) for r in rows[:3]] == [
        ("2001:db8::1", 6, None),
        ("1:0:0:2::4", 6, None),
        ("10.0.0.1", 4, 167772161),
    ]
    assert rows[3]["outcome"] == "bad_ip"


@pytest.mark.spark
def test_timestamp_edge_cases_match_sparks_pattern_parser(spark):
    """The byte-level parse accepts and refuses exactly what Spark's strict pattern parser does."""
    from pyspark.sql import functions as F

    from ipinsights.ingest.logparse import clf_timestamp

    stamps = [
        "31/Dec/2023:18:00:03 -0600",
        "29/Feb/2024:00:00:00 +0000",
        "29/Feb/2023:00:00:00 +0000",
        "31/Apr/2024:00:00:00 +0000",
        "01/Jan/2024:24:00:00 +0000",
        "01/Jan/2024:23:59:60 +0000",
        "01/Jan/2024:23:60:00 +0000",
        "01/Jan/2024:00:00:00 +1900",
        "01/Jan/2024:00:00:00 +1800",
        "01/Jan/2024:00:00:00 -1800",
        "01/Jan/2024:00:00:00 +0560",
        "01/Jan/2024:00:00:00 +0530",
        "00/Jan/2024:00:00:00 +0000",
        "32/Jan/2024:00:00:00 +0000",
        "01/Jab/2024:00:00:00 +0000",
        "01/Jan/2024:00:00:00 +0099",
        "01/Jan/9999:23:59:59 -1800",
        "15/Sep/2026:07:08:09 +1245",
        "01/jan/2024:00:00:00 +0000",
        "1/Jan/2024:00:00:00 +0000",
        "01/Jan/1969:23:00:00 -0100",
    ]
    df = spark.createDataFrame([(s,) for s in stamps], "t string")
    pattern = F.try_to_timestamp(F.col("t"), F.lit("dd/MMM/yyyy:HH:mm:ss Z"))
    expected = [r[0] for r in df.select(F.unix_seconds(pattern)).collect()]
    expected[-1] = None  # Spark takes years before 1970; ours refuses them (broken clocks)
    assert clf_timestamp(pa.array(stamps)).to_pylist() == expected
    assert sum(s is not None for s in expected) == 8


def test_ipv6_spellings_match_python_ipaddress():
    """Random addresses in canonical, expanded, upper-case and leading-zero spellings."""
    import ipaddress
    import random

    rnd = random.Random(7)
    lines, expected = [], []
    for _ in range(300):
        groups = [rnd.choice([0, 0, 0, 1, 0xDB8, 0xFFFF, rnd.randrange(1 << 16)]) for _ in range(8)]
        addr = ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups))
        text = rnd.choice([str(addr), addr.exploded, str(addr).upper(), ":".join(f"{g:02x}" for g in groups)])
        lines.append(OK.replace("1.2.3.4", text))
        mapped = addr.ipv4_mapped
        expected.append(str(mapped) if mapped else str(addr))
    assert [r["ip"] for r in classify(lines)] == expected


JUNK = [
    ("", "empty"),
    ("x" * 9000, "overlong"),
    ("\x00\x01\x02\x7fjunk\x10", "binary"),
    (OK[:-8], "truncated"),
    ('1.2.3.4 - bob [10/Oct/2026:23:30:00 -0500] "GET /login_success HTTP/1.1" 200', "field_count"),
    (OK + ' "extra"', "field_count"),
    (OK.replace(" 200 ", " OK! "), "malformed"),
    (OK.replace("10/Oct/2026", "10/Foo/2026"), "bad_timestamp"),
    (OK.replace("10/Oct/2026", "31/Feb/2026"), "bad_timestamp"),
    (OK.replace("1.2.3.4", "1.2.3.256"), "bad_ip"),
    (OK.replace("1.2.3.4", "01.2.3.4"), "bad_ip"),
    (OK.replace(" bob ", " - "), "missing_entity"),
]


def test_junk_is_quarantined_with_reason():
    rows = classify([line for line, _ in JUNK], LineRules(limits=LineLimits(max_line_length=8192, raw_max_chars=100)))
    assert [r["outcome"] for r in rows] == [reason for _, reason in JUNK]
    for row in rows:
        assert row["entity"] is None and row["dt"] is None
        assert row["raw"] is not None and len(row["raw"]) <= 100


def test_filters_method_path_status():
    lines = [
        OK,
        OK.replace("GET", "POST"),
        OK.replace("/login_success", "/index.html"),
        OK.replace(" 200 ", " 401 "),
        OK.replace(" bob ", " - ").replace("/login_success", "/static/app.js"),  # no user, not selected: fine
    ]
    assert [r["outcome"] for r in classify(lines)] == ["kept"] + ["filtered"] * 4
    rows = classify(
        lines,
        LineRules(ResourceFilter(methods=(), path="/(login_success|index\\.html)", path_match="regex", statuses=())),
    )
    assert [r["outcome"] for r in rows] == ["kept", "kept", "kept", "kept", "filtered"]


def test_entity_from_query_parameter():
    line = OK.replace("/login_success", "/login_success?session=abc&acct=J%C3%BCrgen+X")
    (row,) = classify([line], LineRules(entity=EntityOptions("query", "acct")))
    assert row["entity"] == "Jürgen X"
    (row,) = classify([line], LineRules(entity=EntityOptions("query", "missing")))
    assert row["outcome"] == "missing_entity"


def test_binary_and_unicode():
    rows = classify(
        [OK.replace("bob", "b\u00f6b"), OK.replace("bob", "b\x01b"), OK.replace("Mozilla", "Moz\x07")],
    )
    assert [r["outcome"] for r in rows] == ["kept", "binary", "kept"]  # control characters in the agent are no concern
    assert rows[0]["entity"] == "b\u00f6b"
    assert (
        classify([OK.replace("Mozilla", "Moz\x07")], LineRules(entity=EntityOptions("user_agent")))[0]["outcome"]
        == "binary"
    )
    from ipinsights.ingest import logparse

    invalid = pa.array([OK.encode(), OK.encode().replace(b"bob", b"b\xffb"), OK.encode()[:-3] + b'\xfe\xff"'])
    rows = logparse.classify_batch(invalid.view(pa.string())).to_pylist()
    assert [r["outcome"] for r in rows] == ["kept", "binary", "kept"]  # bad bytes in the agent: no concern
    assert "\ufffd" in rows[1]["raw"]  # quarantined text is valid UTF-8


def test_fast_path_and_exact_grammar_agree():
    """Every line the vectorised path splits gets the same fields from the exact grammar (Python re)."""
    import random

    from ipinsights.ingest import logparse

    rnd = random.Random(5)
    pieces = ["1.2.3.4", "::1", "-", "bob", 'a"b', "[x]", "GET /p?q=1 HTTP/1.1", "", " ", "200", "-", '\\"', "x y"]
    lines = [OK, OK[:60], OK.replace(" 200 ", " - ")]
    for _ in range(3000):
        typical = ["1.2.3.4", "-", "bob", "GET", "200", "-", "/p?q=1 HTTP/1.1", "-", "UA", "", "", "", "UA"]
        parts = [t if rnd.random() < 0.7 else rnd.choice(pieces) for t in typical]
        lines.append(
            f'{parts[0]} {parts[1]} {parts[2]} [10/Oct/2026:23:30:00 -0500] "{parts[3]} {parts[6]}" {parts[4]} 1'
            + rnd.choice(["", f' "{parts[7]}" "{parts[8]}"', f' "{parts[5]}" "{parts[12]}"'])
        )
    arr = pa.array(lines)
    for field in ("user", "user_agent", "ident", "referer"):
        rules = LineRules(entity=EntityOptions(field))
        fast, fields, tails = logparse._fast_fields(arr, rules)
        parsed, exact, _, _ = logparse._exact_fields([line.encode() for line in lines], rules)
        assert fast.sum() > 100 and (parsed[fast]).all()  # the fast path is a subset of the grammar
        # The user agent, whether split or cut from the distinct tails.
        agents, index = logparse._agent_index(fields.get("user_agent"), tails, np.zeros(len(lines), bool), [])
        fields["user_agent"] = pa.array([agents[i].as_py() if i >= 0 else None for i in index], pa.string())
        for name, values in fields.items():
            got = [v for v, f in zip(values.to_pylist(), fast, strict=True) if f]
            assert got == [v for v, f in zip(exact[name], fast, strict=True) if f], (field, name)


@pytest.mark.spark
def test_classify_lines_runs_the_same_rules_in_spark(spark):
    """The Spark wrapper: one Arrow UDF over value; file name, UTC timestamp and day added in the JVM."""
    from ipinsights.ingest import logparse

    lines = [OK, OK.replace("GET", "POST"), "junk", OK.replace(" bob ", " - ")]
    df = spark.createDataFrame([(v, "f.log") for v in lines], "value string, source_file string")
    rows = [r.asDict() for r in logparse.classify_lines(df, LineRules(limits=LineLimits(raw_max_chars=100))).collect()]
    assert [r["outcome"] for r in rows] == ["kept", "filtered", "field_count", "missing_entity"]
    assert rows[0]["ts"] == dt.datetime(2026, 10, 11, 4, 30) and rows[0]["dt"] == dt.date(2026, 10, 11)
    assert (rows[0]["entity"], rows[0]["ip_int"], rows[0]["source_file"]) == ("bob", 16909060, "f.log")
    assert rows[2]["raw"] == "junk" and rows[1]["raw"] is None
    with pytest.raises(ValueError, match="RE2"):
        logparse.classify_lines(df, LineRules(ResourceFilter(path="(?<=x)y", path_match="regex")))


def test_ingest_config_sections_are_the_classifiers_options():
    """One definition of the options: the config's sections are LineRules' parts, checked where defined."""
    from ipinsights.core.config import ConfigError, load_config
    from ipinsights.ingest.job import IngestConfig

    def config(**kw: str) -> IngestConfig:
        return load_config(IngestConfig, "conf/ingest.yml", {"inputs": "a.log", "output": "ev", **kw})

    rules = config(**{"entity.field": "query", "query_param": "u", "methods": "get,post"}).line_rules()
    assert rules.entity == EntityOptions("query", "u") and rules.resource.methods == ("GET", "POST")
    assert rules.limits.max_line_length == 8192
    for bad, message in [
        ({"path_match": "regex", "path": "(?<=x)y"}, "not a valid RE2 regex"),
        ({"entity.field": "query"}, "needs a query_param"),
        ({"statuses": "99"}, "not an HTTP status"),
        ({"max_line_length": "10"}, "max_line_length=10 is out of range"),
        ({"max_bad_ratio": "2"}, "max_bad_ratio=2.0 is out of range"),
    ]:
        with pytest.raises(ConfigError, match=message):
            config(**bad)
