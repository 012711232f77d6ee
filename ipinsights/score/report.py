"""The investigator's daily report: one self-contained HTML page and a CSV of the day's flagged events.

Layout under the reports folder::

    dt=YYYY-MM-DD/report.html   the day's cases first (:mod:`ipinsights.score.cases`: the top open ones, one
                                row each with a one-line summary, the events behind <details>, a 7-day bar
                                chart of open cases, entities with a malicious verdict seen again), then the
                                event counts, the threshold in force and the score histogram (normal vs
                                flagged, a PNG embedded as a data: URI)
    dt=YYYY-MM-DD/flagged.csv   every flagged event of the day, with context (for tooling)

Everything shown comes from bounded Spark aggregates (:mod:`ipinsights.score.spark_report`: per-day
counts, a fixed-bin histogram, the top cases); no table of scores is collected. Entities and addresses
come from logs, so everything user-controlled is HTML-escaped, the page forbids scripts (Content-Security-Policy), and
CSV cells that a spreadsheet would run as a formula are defused. In both, characters that do not show
(bidi overrides like U+202E that reorder a name, zero-width and other format characters, controls, odd
spaces) are written as escapes (:func:`visible_text`), so ``admin\u202e`` cannot pass for another name.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ipinsights.score.rules import RISK_SCORE
from ipinsights.score.schemas import CASE_COLUMNS
from ipinsights.storage.files import atomic_write, is_local, join_uri, local_path

if TYPE_CHECKING:
    from ipinsights.score.rules import Threshold

__all__ = [
    "CaseView",
    "Histogram",
    "COUNT_NAMES",
    "histogram_png",
    "render_report",
    "write_flagged_csv",
    "write_day_report",
    "visible_text",
]

#: Per-day counts, in report order.
COUNT_NAMES = (
    "rows",
    "scored",
    "unseen_entity",
    "learning_period",
    "invalid_ip",
    "level_medium",
    "flagged",
    "flagged_by_score",
    "flagged_learning_period",
    "flagged_unseen",
)


@dataclass(frozen=True)
class CaseView:
    """What a day's report shows of its cases: small (bounded by ``max_cases``, 7 days, the verdict list)."""

    top: list[dict[str, Any]]  # the open cases the report leads with, by rank
    counts: dict[str, int]  # cases, open, network_cases, suppressed_events, suppressed_entities, verdicts_rejected
    trend: list[tuple[str, int | None]]  # (day, open cases) for the 7 days ending with this one (None: not scored)
    floor: float | None = None
    max_cases: int = 50
    returning: list[dict[str, Any]] = field(default_factory=list)  # malicious-verdict entities seen this day
    rejected: tuple[str, ...] = ()  # verdict rows left out (file:line: why)


@dataclass(frozen=True)
class Histogram:
    """Counts of anomaly scores in fixed bins, split into normal (not flagged) and flagged rows."""

    edges: np.ndarray  # (bins + 1,)
    normal: np.ndarray  # (bins,) int64
    flagged: np.ndarray  # (bins,) int64


def histogram_png(hist: Histogram, threshold: float | None = None, title: str = "", xlabel: str = "score") -> bytes:
    """The tutorial's histogram (normal vs flagged) from binned counts, as PNG bytes (log-scale counts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    widths = np.diff(hist.edges)
    for counts, label in ((hist.normal, "normal"), (hist.flagged, "flagged")):
        ax.bar(hist.edges[:-1], counts, width=widths, align="edge", alpha=0.6, label=f"{label} ({int(counts.sum()):,})")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_yscale("log")  # flagged rows are ~1% of traffic: invisible on a linear scale
    ax.set_xlabel(xlabel)
    ax.set_ylabel("events")
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


# Letters that render as nothing (Hangul fillers, the braille blank): str.isprintable() lets them pass.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape_char(c: str) -> str:
    if c.isprintable() and c not in _BLANK_LETTERS:
        return c
    if c in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[c]
    return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"


def visible_text(text: str) -> str:
    """``text`` with every character that does not show as itself written as an escape (``\\u202e``, ``\\t``).

    Escaped: controls, format characters (bidi overrides and isolates, zero-width ones), line and paragraph
    separators, spaces other than U+0020, private-use, unassigned and surrogate code points (all that
    ``str.isprintable`` refuses) and letters that render blank. A string that needs an escape also gets its
    backslashes doubled, so the escaped text reads back one way; other strings are returned unchanged.
    """
    if text.isprintable() and _BLANK_LETTERS.isdisjoint(text):
        return text
    return "".join(_escape_char(c) for c in text.replace("\\", "\\\\"))


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4f}"
    return visible_text(str(v))


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:75em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;
vertical-align:top}th{background:#f0f0f0}.num{text-align:right}.note{color:#555}img{max-width:100%}
#cases{width:100%;table-layout:fixed}#cases td{overflow-wrap:anywhere}#cases .rank{width:3em}
#cases .sev{width:4.5em}#cases .who{width:16em}details table{font-size:90%;width:100%}
.malicious{color:#a00;font-weight:bold}summary{cursor:pointer;color:#036}
"""


def _trend_svg(trend: Sequence[tuple[str, int | None]], budget: int) -> str:
    """Open cases of the last days as small bars (inline SVG: no script, no request; the CSP allows it).
    A day that was not scored shows a dash, not a zero."""
    e = html.escape
    if not trend:
        return ""
    top = max(max(n or 0 for _, n in trend), 1)
    w, h, gap = 26, 40, 4
    bars = []
    for i, (day, count) in enumerate(trend):
        if count is None:
            bars.append(
                f'<text x="{i * (w + gap) + w / 2}" y="{h + 12}" font-size="10" text-anchor="middle">'
                f"–<title>{e(day)}: not scored</title></text>"
            )
            continue
        bh = max(1, round(h * count / top)) if count else 0
        last = i == len(trend) - 1
        fill = "#c33" if count > budget else ("#36c" if last else "#9ab")
        bars.append(
            f'<rect x="{i * (w + gap)}" y="{h - bh}" width="{w}" height="{bh}" fill="{fill}">'
            f"<title>{e(day)}: {count} open cases</title></rect>"
            f'<text x="{i * (w + gap) + w / 2}" y="{h + 12}" font-size="10" text-anchor="middle">{count}</text>'
        )
    width = len(trend) * (w + gap)
    label = ", ".join(f"{d}: {'not scored' if n is None else n}" for d, n in trend)
    return (
        f'<svg id="trend" role="img" aria-label="open cases per day: {e(label)}" width="{width}" height="{h + 16}" '
        f'viewBox="0 0 {width} {h + 16}" xmlns="http://www.w3.org/2000/svg">{"".join(bars)}</svg>'
    )


def _when(t: Any) -> str:
    return "—" if t is None else t.strftime("%Y-%m-%d %H:%M:%S")


def _case_rows(cases: Sequence[Mapping[str, Any]]) -> list[str]:
    """One table row per case: rank, severity, who, the one-line summary and its events behind <details>."""
    e = html.escape
    out = []
    for c in cases:
        if c["kind"] == "network":
            who = f"<b>{e(_cell(c['source']))}</b><br>{int(c['entities'])} entities"
        else:
            who = f"<b>{e(_cell(c['entity']))}</b>"
        flag = ' <span class="malicious">known malicious</span>' if c.get("prior_verdict") == "malicious" else ""
        events = sorted(c.get("events_detail") or [], key=lambda x: (x["ts"] is None, x["ts"]))
        shown = len(events)
        in_force = [x["anomaly_score"] if x.get("risk_score") is None else x["risk_score"] for x in events]
        detail_rows = "".join(
            f"<tr><td>{e(_when(x['ts']))}</td><td>{e(_cell(x['entity']))}</td><td>{e(_cell(x['ip']))}</td>"
            f'<td>{e(_cell(x["network_name"]))}</td><td class="num">{e(_cell(score))}</td>'
            f'<td class="num">{e(_cell(x["normal_percentile"]))}</td></tr>'
            for x, score in zip(events, in_force, strict=True)
        )
        more = f" ({shown} of {int(c['events'])} shown)" if shown < int(c["events"]) else ""
        details = (
            f"<details><summary>{int(c['events'])} event{'s' if int(c['events']) != 1 else ''}{more}</summary>"
            "<table><tr><th>time (UTC)</th><th>entity</th><th>ip</th><th>network</th><th>score</th>"
            f"<th>normal %</th></tr>{detail_rows}</table></details>"
        )
        out.append(
            f'<tr class="case" id="{e(c["case_id"])}"><td class="rank num">{int(c["rank"])}</td>'
            f'<td class="sev num">{float(c["severity"]):.2f}</td><td class="who">{who}<br><small>{e(c["case_id"])}'
            f"</small></td><td>{e(visible_text(c['summary'] or ''))}{flag}{details}</td></tr>"
        )
    return out


def _count(n: int, word: str) -> str:
    """``1 entity``, ``2 entities``, ``0 events``."""
    if n == 1:
        return f"1 {word}"
    return f"{n:,} {word[:-1] + 'ies' if word.endswith('y') else word + 's'}"


def _cases_section(view: CaseView) -> list[str]:
    e = html.escape
    c = view.counts
    floor = "none (every case open)" if view.floor is None else f"{view.floor:.2f}"
    parts = [
        "<h2>Cases</h2>",
        f'<p id="case-counts"><b>{_count(c["open"], "open case")}</b> (severity &ge; case floor {e(floor)}) of '
        f"{c['cases']:,} grouped from the flagged events; {_count(c['network_cases'], 'network case')}. Showing "
        f"the top {len(view.top)} (budget {view.max_cases}); the cases table has them all. Suppressed by benign "
        f"verdicts: {_count(c['suppressed_events'], 'event')} of {_count(c['suppressed_entities'], 'entity')}.</p>",
    ]
    if view.trend:
        parts.append(f"<p>Open cases, last {len(view.trend)} days: {_trend_svg(view.trend, view.max_cases)}</p>")
    if view.rejected:
        items = "".join(f"<li>{e(visible_text(r))}</li>" for r in view.rejected[:20])
        parts.append(
            f'<p id="verdicts-rejected">{len(view.rejected)} verdict row(s) could not be read and were left '
            f"out:</p><ul>{items}</ul>"
        )
    if view.returning:
        parts.append(
            '<h3 class="malicious">Entities with a malicious verdict seen today</h3>'
            '<table id="returning"><tr><th>entity</th><th>events</th><th>first-last (UTC)</th>'
            "<th>addresses</th></tr>"
        )
        for r in view.returning:
            parts.append(
                f'<tr><td>{e(_cell(r["entity"]))}</td><td class="num">{int(r["events"])}</td>'
                f"<td>{e(_when(r['first_ts']))} - {e(_when(r['last_ts']))}</td>"
                f"<td>{e(', '.join(visible_text(str(x)) for x in r['ips']))}</td></tr>"
            )
        parts.append("</table>")
    if view.top:
        parts.append(
            '<table id="cases"><tr><th class="rank">#</th><th class="sev">severity</th>'
            '<th class="who">entity / source</th><th>what happened</th></tr>'
        )
        parts.extend(_case_rows(view.top))
        parts.append("</table>")
        parts.append(
            '<p class="note">Severity is in decades of rarity: the score\'s (2 at the 1% threshold, 3 at 99.9%, '
            "at most 5), plus up to 1 for an entity whose logins come from one or two networks, plus half a point "
            "per tenfold events and a point per tenfold new networks; a network case (one source, many entities "
            "never seen on it) adds 3 points per tenfold entities. Mark a case benign or malicious in the verdicts "
            "file with its id.</p>"
        )
    else:
        parts.append('<p id="no-cases">No open cases.</p>')
    return parts


def render_report(
    day: str,
    counts: Mapping[str, int],
    threshold: Threshold,
    view: CaseView | None,
    png: bytes | None,
) -> str:
    """The report page as a string: self-contained (inline style, image as data: URI, inline SVG chart),
    cases first, every value escaped."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # No scripts, no network: the page only needs its inline style and its data: image.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">",
        f"<title>IP Insights report {e(day)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>IP Insights daily report: {e(day)} (UTC)</h1>",
    ]
    if not counts.get("rows"):
        parts.append('<p id="empty"><b>No events for this day</b>: there was no input, so nothing was scored.</p>')
    if view is not None:
        parts.extend(_cases_section(view))
    parts += [
        "<h2>Events</h2>",
        f'<p id="threshold">Threshold in force: <b>{e(threshold.on)} &gt; {threshold.value:.6g}</b> '
        f"({e(threshold.source)})</p>",
        '<table id="counts"><tr><th>count</th><th>events</th></tr>',
        *(f'<tr><td>{e(k)}</td><td class="num">{int(counts.get(k, 0)):,}</td></tr>' for k in counts),
        "</table>",
    ]
    if not counts.get("flagged"):
        parts.append('<p id="no-flagged">No flagged events.</p>')
    if png is not None:
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        parts.append(
            f'<h2>Score distribution</h2><img id="histogram" alt="anomaly score histogram, normal vs flagged" '
            f'src="{uri}">'
        )
    elif counts.get("rows"):
        parts.append('<p class="note">No event could be scored (invalid addresses only).</p>')
    parts.append('<p class="note">Every flagged event, with its context, is in flagged.csv beside this page.</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_safe(v: Any) -> Any:
    if isinstance(v, str):
        v = visible_text(v)
        # A log-supplied entity like "=HYPERLINK(...)" would run as a formula when the CSV is opened in a spreadsheet.
        if v.startswith(_FORMULA_START):
            return "'" + v
    return "" if v is None else v


def write_flagged_csv(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> str | Path:
    """All flagged cases as CSV with a header (streamed; written atomically)."""
    with atomic_write(path, newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CASE_COLUMNS)
        for r in rows:
            w.writerow([_csv_safe(r[c]) for c in CASE_COLUMNS])
    return path


def write_day_report(
    reports_dir: str | Path,
    day: str,
    counts: Mapping[str, int],
    hist: Histogram | None,
    flagged_rows: Iterable[Mapping[str, Any]],
    threshold: Threshold,
    view: CaseView | None = None,
) -> str | Path:
    """Write ``dt=DAY/report.html`` and ``dt=DAY/flagged.csv`` for one day (a folder or URI); returns the
    HTML page (a ``Path`` when local). ``flagged_rows``: the day's flagged events (:data:`CASE_COLUMNS`),
    rarest first, streamed into the CSV."""
    out = join_uri(reports_dir, f"dt={day}")
    write_flagged_csv(join_uri(out, "flagged.csv"), flagged_rows)
    fused = threshold.on == RISK_SCORE  # the histogram's title and axis name the score in force
    what, axis = ("risk scores", "risk score") if fused else ("anomaly scores", "anomaly score (-dot_product)")
    png = histogram_png(hist, threshold.value, f"{day}: {what}", axis) if hist is not None else None
    page = join_uri(out, "report.html")
    with atomic_write(page, encoding="utf-8") as fh:
        fh.write(render_report(day, counts, threshold, view, png))
    return local_path(page) if is_local(page) else page
