"""Log line parsing and classification (tiny in-memory data, shared local[2] session)."""

from __future__ import annotations

import datetime as dt

import pytest

pytestmark = pytest.mark.spark

OK = '1.2.3.4 - bob [10/Oct/2026:23:30:00 -0500] "GET /login_success HTTP/1.1" 200 476 "-" "Mozilla/5.0"'


def classify(spark, lines, **kw):
    from ipinsights import logparse

    df = spark.createDataFrame([(v, "f.log") for v in lines], "value string, source_file string")
    return [r.asDict() for r in logparse.classify_lines(df, **kw).collect()]


def test_timezone_offset_is_converted_to_utc_day(spark):
    (row,) = classify(spark, [OK])
    assert row["outcome"] == "kept"
    assert row["ts"] == dt.datetime(2026, 10, 11, 4, 30)  # session time zone is UTC
    assert row["dt"] == dt.date(2026, 10, 11)
    assert (row["entity"], row["ip"], row["ip_int"], row["ip_version"]) == ("bob", "1.2.3.4", 16909060, 4)


def test_offsets_and_calendar(spark):
    cases = {
        "01/Jan/2026:00:15:00 +0130": dt.datetime(2025, 12, 31, 22, 45),
        "29/Feb/2028:12:00:00 +0000": dt.datetime(2028, 2, 29, 12, 0),
        "31/Dec/2026:20:00:00 -0430": dt.datetime(2027, 1, 1, 0, 30),
    }
    rows = classify(spark, [OK.replace("10/Oct/2026:23:30:00 -0500", stamp) for stamp in cases])
    assert [(r["ts"], r["dt"]) for r in rows] == [(utc, utc.date()) for utc in cases.values()]


def test_escaped_quotes_and_common_format(spark):
    lines = [
        '5.6.7.8 - al [10/Oct/2026:10:00:00 +0000] "GET /login_success?a=\\"x\\" HTTP/1.1" 200 1 "-" "UA \\"q\\" \\\\"',
        '5.6.7.8 - ann [10/Oct/2026:10:00:00 +0000] "GET /login_success HTTP/1.1" 200 -',
    ]
    rows = classify(spark, lines)
    assert [r["outcome"] for r in rows] == ["kept", "kept"]
    rows = classify(spark, lines[:1], entity_field="user_agent")
    assert rows[0]["entity"] == 'UA "q" \\'


def test_ipv6_client_is_canonical(spark):
    rows = classify(
        spark,
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


def test_timestamp_edge_cases_match_sparks_pattern_parser(spark):
    """The cast-based parse accepts and refuses exactly what the strict pattern parser does."""
    from pyspark.sql import functions as F

    from ipinsights.logparse import clf_timestamp

    stamps = [
        "31/Dec/2023:18:00:03 -0600", "29/Feb/2024:00:00:00 +0000", "29/Feb/2023:00:00:00 +0000",
        "31/Apr/2024:00:00:00 +0000", "01/Jan/2024:24:00:00 +0000", "01/Jan/2024:23:59:60 +0000",
        "01/Jan/2024:23:60:00 +0000", "01/Jan/2024:00:00:00 +1900", "01/Jan/2024:00:00:00 +1800",
        "01/Jan/2024:00:00:00 -1800", "01/Jan/2024:00:00:00 +0560", "01/Jan/2024:00:00:00 +0530",
        "00/Jan/2024:00:00:00 +0000", "32/Jan/2024:00:00:00 +0000", "01/Jab/2024:00:00:00 +0000",
        "01/Jan/2024:00:00:00 +0099", "01/Jan/9999:23:59:59 -1800", "15/Sep/2026:07:08:09 +1245",
    ]  # fmt: skip
    df = spark.createDataFrame([(s,) for s in stamps], "t string")
    pattern = F.try_to_timestamp(F.col("t"), F.lit("dd/MMM/yyyy:HH:mm:ss Z"))
    rows = df.select(clf_timestamp(F.col("t")).alias("ours"), pattern.alias("spark")).collect()
    assert [r["ours"] for r in rows] == [r["spark"] for r in rows]
    assert sum(r["ours"] is not None for r in rows) == 7


def test_ipv6_spellings_match_python_ipaddress(spark):
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
    assert [r["ip"] for r in classify(spark, lines)] == expected


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


def test_junk_is_quarantined_with_reason(spark):
    rows = classify(spark, [line for line, _ in JUNK], max_line_length=8192, raw_max_chars=100)
    assert [r["outcome"] for r in rows] == [reason for _, reason in JUNK]
    for row in rows:
        assert row["entity"] is None and row["dt"] is None
        assert row["raw"] is not None and len(row["raw"]) <= 100


def test_filters_method_path_status(spark):
    lines = [
        OK,
        OK.replace("GET", "POST"),
        OK.replace("/login_success", "/index.html"),
        OK.replace(" 200 ", " 401 "),
        OK.replace(" bob ", " - ").replace("/login_success", "/static/app.js"),  # no user, not selected: fine
    ]
    assert [r["outcome"] for r in classify(spark, lines)] == ["kept"] + ["filtered"] * 4
    rows = classify(spark, lines, methods=(), path="/(login_success|index\\.html)", path_match="regex", statuses=())
    assert [r["outcome"] for r in rows] == ["kept", "kept", "kept", "kept", "filtered"]


def test_entity_from_query_parameter(spark):
    line = OK.replace("/login_success", "/login_success?session=abc&acct=J%C3%BCrgen+X")
    (row,) = classify(spark, [line], entity_field="query", query_param="acct")
    assert row["entity"] == "Jürgen X"
    (row,) = classify(spark, [line], entity_field="query", query_param="missing")
    assert row["outcome"] == "missing_entity"


@pytest.mark.parametrize("entity_field", ["user", "user_agent", "query"])
def test_generated_code_fits_the_jit_limit(spark, tmp_path, entity_field):
    """HotSpot never compiles a method over 8000 bytes of bytecode (it stays interpreted: ingest ran
    2x slower when the parser's stage grew past it), so each whole-stage-codegen method must fit."""
    import re

    from ipinsights import io, logparse

    (tmp_path / "a.log").write_text(OK + "\n")
    df = logparse.classify_lines(
        io.read_log_lines(spark, [str(tmp_path / "a.log")]), entity_field=entity_field, query_param="u"
    )
    plan = df._jdf.queryExecution().executedPlan()
    code = spark.sparkContext._jvm.org.apache.spark.sql.execution.debug.package.codegenString(plan)
    sizes = [int(n) for n in re.findall(r"maxMethodCodeSize:(\d+)", code)]
    assert sizes and max(sizes) < 8000, sizes
