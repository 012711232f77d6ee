"""The daily report: bounded aggregates, escaping of log-supplied strings, CSV formula defusing, rendering."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
from browser import dump_dom

from ipinsights.score.report import (
    CASE_COLUMNS,
    COUNT_NAMES,
    CaseView,
    Histogram,
    histogram_png,
    render_report,
    write_flagged_csv,
)
from ipinsights.score.rules import RULE_INVALID, RULE_LEARNING, RULE_SCORE, Threshold
from ipinsights.score.schemas import SCORES
from ipinsights.score.spark_arrow import struct_type
from ipinsights.score.spark_report import day_counts, score_histograms

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _hist() -> Histogram:
    rng = np.random.default_rng(0)
    edges = np.linspace(-5, 5, 31)
    normal = np.histogram(rng.normal(-1, 1, 5000), edges)[0]
    flagged = np.histogram(rng.normal(3, 0.5, 80), edges)[0]
    return Histogram(edges, normal, flagged)


def _case(entity: str, score: float | None, rule: str = RULE_SCORE) -> dict:
    case = dict.fromkeys(CASE_COLUMNS)
    case.update(
        {
            "entity": entity,
            "ip": "203.0.113.9",
            "anomaly_score": score,
            "rule": rule,
            "level": "high",
            "training_count": 12,
            "seen_exact_ip": False,
            "seen_same_24": False,
            "seen_same_16": True,
            "nearest_networks": "203.0.112.0/24 (cos 0.80, 9 events)",
        }
    )
    return case


BIDI = "admin\u202egnp.exe"  # renders as "adminexe.png" unless escaped


def _view_case(rank: int, entity: str | None, kind: str = "entity", source: str | None = None) -> dict:
    import datetime as dt

    ts = dt.datetime(2024, 1, 9, 2, 10, tzinfo=dt.timezone.utc)
    events = [
        {
            "anomaly_score": 3.5,
            "ts": ts,
            "entity": entity or f"user_{i}",
            "ip": "203.0.113.9",
            "normal_percentile": 99.97,
            "network_name": "AS64512 Kalonet Mobile (BR)",
            "new_network": True,
        }
        for i in range(3 if kind == "entity" else 12)
    ]
    return {
        "case_id": f"E-20240109-00000000000{rank}",
        "rank": rank,
        "severity": 6.0 - rank / 10,
        "kind": kind,
        "entity": entity,
        "source": source,
        "entities": 1 if kind == "entity" else 12,
        "events": len(events) + 1,
        "summary": f"first login from AS64512 Kalonet Mobile (BR), 3 events 02:10-02:40 UTC; {EVIL}",
        "prior_verdict": "malicious" if rank == 2 else None,
        "events_detail": events,
    }


def _view(cases: list[dict]) -> CaseView:
    counts = {
        "cases": 40,
        "open": len(cases),
        "network_cases": 1,
        "suppressed_events": 3,
        "suppressed_entities": 2,
        "verdicts_rejected": 1,
    }
    trend = [("2024-01-03", None), *((f"2024-01-0{d}", d) for d in range(4, 9)), ("2024-01-09", 60)]
    returning = [{"entity": BIDI, "events": 2, "first_ts": None, "last_ts": None, "ips": ["192.0.2.1"]}]
    return CaseView(cases, counts, trend, 3.9, 50, returning, (f"v.csv:3: {EVIL}",))


def test_render_escapes_log_supplied_strings():
    page = render_report(
        "2024-01-09",
        {"rows": 10, "flagged": 2},
        Threshold(1.25, f"fixed {EVIL}"),
        _view([_view_case(1, EVIL), _view_case(2, BIDI)]),
        histogram_png(_hist(), 1.25),
    )
    assert "<script>" not in page and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert "\u202e" not in page and "admin\\u202egnp.exe" in page  # the bidi override shows as an escape
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert page.count("<img ") == 1 and 'src="data:image/png;base64,' in page
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1))
    assert png.startswith(b"\x89PNG")
    assert "anomaly_score &gt; 1.25" in page


def test_render_empty_day_says_so():
    page = render_report("2024-01-09", dict.fromkeys(COUNT_NAMES, 0), Threshold(1.0, "fixed"), _view([]), None)
    assert "No events for this day" in page and "No open cases" in page and "No flagged events" in page
    assert "<img" not in page


def test_csv_defuses_formulas(tmp_path):
    p = write_flagged_csv(tmp_path / "f.csv", [_case('=HYPERLINK("http://evil")', 2.0), _case("alice", 1.5)])
    lines = p.read_text().splitlines()
    assert lines[0].startswith("entity,ip,ts,anomaly_score,level,rule,risk_score,normal_percentile,entity_percentile")
    assert lines[1].startswith("\"'=HYPERLINK") and lines[2].startswith("alice,")


@pytest.mark.spark
def test_counts_and_histogram_are_aggregates(spark):
    level = {0: "low", 1: "low", 2: "medium", 3: "high", 4: "high"}
    rows = [
        (
            "a",
            "1.2.3.4",
            None,
            None,
            -1.0,
            0.5,
            float(s),
            None,
            5,
            False,
            RULE_SCORE,
            50.0,
            90.0,
            level[s],
            s > 2.5,
            "2024-01-09",
        )
        for s in range(5)
    ]
    rows += [
        (
            "u",
            "1.2.3.4",
            None,
            None,
            1.0,
            3.0,
            3.0,
            None,
            0,
            True,
            RULE_LEARNING,
            None,
            99.0,
            "high",
            True,
            "2024-01-09",
        )
    ]
    rows += [
        ("a", "::1", None, None, None, None, None, None, 5, False, RULE_INVALID, None, None, None, False, "2024-01-10")
    ]
    df = spark.createDataFrame(rows, struct_type(SCORES))
    c = day_counts(df, ["2024-01-09", "2024-01-10", "2024-01-11"])
    assert c["2024-01-09"] == {
        "rows": 6,
        "scored": 6,
        "unseen_entity": 1,
        "learning_period": 1,
        "invalid_ip": 0,
        "level_medium": 1,
        "flagged": 3,
        "flagged_by_score": 2,
        "flagged_learning_period": 1,
        "flagged_unseen": 1,
    }
    assert c["2024-01-10"]["invalid_ip"] == 1 and c["2024-01-11"]["rows"] == 0
    h = score_histograms(df, bins=4)
    assert set(h) == {"2024-01-09"}
    assert h["2024-01-09"].normal.sum() == 3 and h["2024-01-09"].flagged.sum() == 3
    assert h["2024-01-09"].edges[0] == 0.0 and h["2024-01-09"].edges[-1] == 4.0


def test_injected_page_renders_without_running_script(tmp_path):
    """Headless Chromium: cases first with their details and the 7-day chart; hostile and bidi entity
    names show as escaped text, no script element exists, the image decodes."""
    page = tmp_path / "report.html"
    cases = [_view_case(1, EVIL), _view_case(2, BIDI), _view_case(3, None, "network", "45.33.32.0/24")]
    page.write_text(
        render_report(
            "2024-01-09",
            {"rows": 10, "flagged": 1},
            Threshold(1.0, "fixed"),
            _view(cases),
            histogram_png(_hist(), 1.0),
        )
    )
    dom = dump_dom(page, tmp_path / "profile")
    assert "<script" not in dom and "&lt;script&gt;" in dom
    assert len(re.findall(r"<img ", dom)) == 1
    assert "\u202e" not in dom and "admin\\u202egnp.exe" in dom
    assert len(re.findall(r'<tr class="case"', dom)) == 3 and dom.count("<details>") == 3
    assert dom.index('id="cases"') < dom.index('id="counts"')  # cases first
    assert "4 events" in dom and "13 events (12 of 13 shown)" in dom and "known malicious" in dom
    chart = dom.split('<svg id="trend"', 1)[1].split("</svg>", 1)[0]
    assert chart.count("<rect") == 6 and "not scored" in chart and 'fill="#c33"' in chart  # 60 > the budget
    assert 'id="returning"' in dom and 'id="verdicts-rejected"' in dom
