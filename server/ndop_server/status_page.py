"""The status page: a pure function from figures to one self-contained HTML page.

For the operator and the information-governance lead, readable at a glance: the register's
size over its versions (an inline SVG chart drawn here, no script anywhere), today's quota
use, checks and numbers per organisation per day, refusals, and whether the audit chain is
intact. Every text printed is escaped. The figures hold counts, versions, dates and
organisation names; never an NHS number, digest, element, token or request id.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from typing import Final

CHART_COLOUR: Final = "#005eb8"
"""The register chart's bars (NHS blue); the screenshot test looks for it."""
HEADER_COLOUR: Final = "#425563"
"""Table header rows."""
QUOTA_COLOURS: Final = (("#007f3b", 0.0), ("#ffb81c", 0.8), ("#da291c", 1.0))
"""Quota bars: green, amber from 80 % used, red when the day's allowance is used up."""
QUOTA_TRACK: Final = "#e8edee"
QUOTA_BAR_WIDTH: Final = 160
CHART_WIDTH: Final = 900
CHART_HEIGHT: Final = 260
PLOT_LEFT: Final = 80
PLOT_TOP: Final = 24
PLOT_HEIGHT: Final = 196
PLOT_WIDTH: Final = CHART_WIDTH - PLOT_LEFT - 10

REASONS: Final = {
    "resource-exhausted": "over a daily limit",
    "permission-denied": "access revoked",
    "invalid-argument": "malformed request",
    "already-exists": "request id reused",
    "failed-precondition": "filter version not served",
    "unavailable": "store unreachable",
    "auth-failed": "credential refused",
    "unauthenticated": "credential refused",
}
"""Refusal outcomes of the audit log, as people read them."""

STYLE: Final = """
body { font-family: "Liberation Sans", Arial, sans-serif; margin: 0; color: #212b32;
       background: #f0f4f5; }
main { width: 960px; margin: 0 auto; padding: 16px 20px 32px; background: #ffffff; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 24px 0 8px; }
p.meta { margin: 0 0 8px; color: #4c6272; }
p.note { color: #4c6272; font-size: 13px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th { background: #425563; color: #ffffff; text-align: left; padding: 5px 8px; }
td { border-bottom: 1px solid #d8dde0; padding: 4px 8px; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.empty { color: #4c6272; font-style: italic; }
.state { padding: 8px 12px; border-left: 8px solid; font-weight: bold; }
.intact { border-color: #007f3b; background: #e6f2eb; }
.broken { border-color: #da291c; background: #fbe9e8; }
.unknown { border-color: #ffb81c; background: #fff6e0; }
#register-chart { display: block; margin-bottom: 8px; }
svg text { font-family: "Liberation Sans", Arial, sans-serif; fill: #212b32; }
""".strip()

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()}'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""No script, no fetch, no frame: only this page's own style block."""


@dataclass(frozen=True)
class VersionPoint:
    version: int
    published_at: str
    count: int
    added: int
    removed: int


@dataclass(frozen=True)
class DayActivity:
    day: str
    organisation: str
    checks: int
    completed: int
    refused: int
    numbers: int
    filter_downloads: int


@dataclass(frozen=True)
class QuotaUse:
    organisation: str
    active: bool
    numbers_used: int
    numbers_limit: int
    checks_used: int
    checks_limit: int
    filters_used: int
    filters_limit: int


@dataclass(frozen=True)
class RefusalCount:
    day: str
    organisation: str | None
    """None for a credential nobody could be identified by."""
    outcome: str
    count: int


@dataclass(frozen=True)
class AuditState:
    intact: bool
    rows: int
    checked_at: str
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerState:
    version: int
    count: int
    store_reachable: bool
    open_checks: int
    started_at: str


@dataclass(frozen=True)
class StatusData:
    generated_at: str
    days: int
    """How many UTC days, today included, the activity and refusal tables cover."""
    server: ServerState
    versions: Sequence[VersionPoint] = ()
    """Oldest first."""
    activity: Sequence[DayActivity] = ()
    quotas: Sequence[QuotaUse] = ()
    refusals: Sequence[RefusalCount] = ()
    audit: AuditState | None = None
    store_error: str | None = None
    """Set when the store could not be read: the page then says so and shows the rest."""
    notes: tuple[str, ...] = field(default=())


def render_status(data: StatusData) -> str:
    """The whole page as a string of HTML."""
    server = data.server
    reachable = "store reachable" if server.store_reachable else "STORE UNREACHABLE"
    checks = f"{server.open_checks:,} check{'' if server.open_checks == 1 else 's'} open"
    serving = (
        f"serving register version {server.version:,} ({server.count:,} opted out)"
        if server.version
        else "no register version loaded yet"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="refresh" content="60">',
        "<title>ndop status</title>",
        f"<style>{STYLE}</style></head><body><main>",
        "<h1>ndop status</h1>",
        f'<p class="meta" id="server">This server: {_e(serving)} · {_e(reachable)} · '
        f"{_e(checks)} · up since {_e(_when(server.started_at))} · page generated "
        f"{_e(_when(data.generated_at))} UTC</p>",
    ]
    if data.store_error:
        parts.append(f'<p class="state broken" id="store-error">{_e(data.store_error)}</p>')
    parts += [
        "<h2>Register size by version</h2>",
        register_chart(data.versions),
        _versions_table(data.versions[-8:]),
        "<h2>Quota use today (UTC)</h2>",
        _quota_table(data.quotas),
        f"<h2>Checks per organisation per day (last {data.days} days)</h2>",
        _activity_table(data.activity),
        f"<h2>Refusals (last {data.days} days)</h2>",
        _refusals_table(data.refusals),
        "<h2>Audit log</h2>",
        _audit_state(data.audit),
        '<p class="note">Counts, versions, dates and organisation names only: no NHS number, '
        "digest, token or request id is shown. Organisation figures come from the shared "
        "store, so they cover every replica; the line at the top is this server alone. The "
        "page refreshes every minute.</p>",
        *(f'<p class="note">{_e(note)}</p>' for note in data.notes),
        "</main></body></html>",
    ]
    return "\n".join(parts)


def register_chart(versions: Sequence[VersionPoint]) -> str:
    """A bar per version, its height the version's count, on a scale from zero."""
    if not versions:
        return '<p class="empty" id="register-chart">No register version published yet.</p>'
    top = nice_ceiling(max(point.count for point in versions))
    slot = PLOT_WIDTH / len(versions)
    bar = int(max(2, min(48, slot * 0.7)))
    base = PLOT_TOP + PLOT_HEIGHT
    label_every = math.ceil(len(versions) / 24)
    out = [
        f'<svg id="register-chart" role="img" width="{CHART_WIDTH}" height="{CHART_HEIGHT}" '
        f'viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" xmlns="http://www.w3.org/2000/svg" '
        f'aria-label="Register size by version, {len(versions)} versions">',
        "<title>Register size by version</title>",
    ]
    for step in range(5):
        value = top * step / 4
        y = base - round(PLOT_HEIGHT * step / 4)
        out.append(
            f'<line x1="{PLOT_LEFT}" y1="{y}" x2="{PLOT_LEFT + PLOT_WIDTH}" y2="{y}" '
            'stroke="#d8dde0" stroke-width="1" shape-rendering="crispEdges"/>'
        )
        out.append(
            f'<text x="{PLOT_LEFT - 8}" y="{y + 4}" text-anchor="end" font-size="12">'
            f"{_e(_short(value))}</text>"
        )
    for position, point in enumerate(versions):
        height = round(PLOT_HEIGHT * point.count / top) if top else 0
        x = PLOT_LEFT + int(slot * position + (slot - bar) / 2)
        middle = x + bar // 2
        out.append(
            f'<rect class="bar" x="{x}" y="{base - height}" width="{bar}" height="{height}" '
            f'fill="{CHART_COLOUR}" shape-rendering="crispEdges">'
            f"<title>version {point.version:,}: {point.count:,} opted out</title></rect>"
        )
        if position % label_every == 0:
            out.append(
                f'<text x="{middle}" y="{base + 16}" text-anchor="middle" font-size="12">'
                f"v{point.version}</text>"
            )
        if len(versions) <= 12:
            out.append(
                f'<text x="{middle}" y="{base - height - 5}" text-anchor="middle" '
                f'font-size="11">{point.count:,}</text>'
            )
    out.append(
        f'<text x="{PLOT_LEFT}" y="{CHART_HEIGHT - 4}" font-size="12">register version '
        f"(oldest left); height: opted-out entries</text>"
    )
    out.append("</svg>")
    return "".join(out)


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least `value`."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * power >= value:
            return float(factor * power)
    return float(10 * power)


def _short(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1_000:
        return f"{value / 1_000:g}k"
    return f"{value:g}"


def _versions_table(versions: Sequence[VersionPoint]) -> str:
    rows = [
        (
            _num(point.version),
            _e(_when(point.published_at)),
            _num(point.count),
            _num(point.added, "+"),
            _num(point.removed, "-"),
        )
        for point in reversed(versions)
    ]
    return _table(
        "versions",
        ("Version", "Published (UTC)", "Opted out", "Added", "Removed"),
        (True, False, True, True, True),
        rows,
        "No version yet.",
    )


def _quota_table(quotas: Sequence[QuotaUse]) -> str:
    rows = [
        (
            _e(quota.organisation) + ("" if quota.active else " (revoked)"),
            _quota_bar(quota.numbers_used, quota.numbers_limit),
            _e(_of(quota.numbers_used, quota.numbers_limit)),
            _e(_of(quota.checks_used, quota.checks_limit)),
            _e(_of(quota.filters_used, quota.filters_limit)),
        )
        for quota in quotas
    ]
    return _table(
        "quotas",
        ("Organisation", "Numbers", "Numbers used", "Checks", "Filter downloads"),
        (False, False, True, True, True),
        rows,
        "No organisation yet.",
    )


def _quota_bar(used: int, limit: int) -> str:
    share = 1.0 if limit <= 0 else min(used / limit, 1.0)
    colour = next(c for c, start in reversed(QUOTA_COLOURS) if share >= start)
    width = round(QUOTA_BAR_WIDTH * share) if limit > 0 else 0
    return (
        f'<svg class="quota" width="{QUOTA_BAR_WIDTH}" height="12" role="img" '
        f'aria-label="{_e(_percent(used, limit))} of the daily quota used">'
        f'<rect width="{QUOTA_BAR_WIDTH}" height="12" fill="{QUOTA_TRACK}" '
        'shape-rendering="crispEdges"/>'
        f'<rect width="{width}" height="12" fill="{colour}" shape-rendering="crispEdges"/>'
        "</svg>"
    )


def _percent(used: int, limit: int) -> str:
    if limit <= 0:
        return "no allowance" if used == 0 else "over"
    share = 100 * used / limit
    return "<1 %" if 0 < share < 1 else f"{share:.0f} %"


def _of(used: int, limit: int) -> str:
    return f"{used:,} of {limit:,} ({_percent(used, limit)})"


def _activity_table(activity: Sequence[DayActivity]) -> str:
    rows = [
        (
            _e(row.day),
            _e(row.organisation),
            _num(row.checks),
            _num(row.completed),
            _num(row.refused),
            _num(row.numbers),
            _num(row.filter_downloads),
        )
        for row in activity
    ]
    return _table(
        "activity",
        ("Day", "Organisation", "Checks", "Completed", "Refused", "Numbers checked", "Filters"),
        (False, False, True, True, True, True, True),
        rows,
        "No checks in this period.",
    )


def _refusals_table(refusals: Sequence[RefusalCount]) -> str:
    rows = [
        (
            _e(row.day),
            _e(row.organisation) if row.organisation else "<i>not identified</i>",
            _e(REASONS.get(row.outcome, row.outcome)),
            _e(row.outcome),
            _num(row.count),
        )
        for row in refusals
    ]
    return _table(
        "refusals",
        ("Day", "Organisation", "Reason", "Audit outcome", "Count"),
        (False, False, False, False, True),
        rows,
        "No refusals in this period.",
    )


def _audit_state(audit: AuditState | None) -> str:
    if audit is None:
        return '<p class="state unknown" id="audit-state">Audit chain not checked yet.</p>'
    when = _e(_when(audit.checked_at))
    if audit.intact:
        return (
            f'<p class="state intact" id="audit-state">Audit chain intact: '
            f"{audit.rows:,} rows verified at {when} UTC.</p>"
        )
    shown = "".join(f"<li>{_e(problem)}</li>" for problem in audit.problems[:10])
    more = len(audit.problems) - 10
    if more > 0:
        shown += f"<li>… and {more:,} more</li>"
    return (
        f'<div class="state broken" id="audit-state">Audit chain BROKEN: '
        f"{len(audit.problems):,} problem{'' if len(audit.problems) == 1 else 's'} in "
        f"{audit.rows:,} rows, found at {when} UTC; run <code>ndop audit verify</code>."
        f"<ul>{shown}</ul></div>"
    )


def _table(
    name: str,
    headers: Sequence[str],
    numeric: Sequence[bool],
    rows: Iterable[Sequence[str]],
    empty: str,
) -> str:
    """A table whose cells are already escaped HTML."""
    classes = [' class="n"' if is_number else "" for is_number in numeric]
    head = "".join(
        f"<th{kind}>{_e(title)}</th>" for title, kind in zip(headers, classes, strict=True)
    )
    body = [
        "<tr>"
        + "".join(f"<td{kind}>{cell}</td>" for cell, kind in zip(row, classes, strict=True))
        + "</tr>"
        for row in rows
    ]
    if not body:
        body = [f'<tr><td class="empty" colspan="{len(headers)}">{_e(empty)}</td></tr>']
    return (
        f'<table id="{name}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def _num(value: int, sign: str = "") -> str:
    return f"{sign if value else ''}{value:,}"


def _when(iso: str) -> str:
    """'2026-11-25T16:40:02.123+00:00' -> '2026-11-25 16:40:02'."""
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def _e(text: object) -> str:
    return escape(str(text), quote=True)
