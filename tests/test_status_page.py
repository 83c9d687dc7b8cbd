"""The status page: the renderer on its own (escaping, chart scale, the audit chain's state),
then a real server's page in a real headless Chromium (Debian's package; `make test` installs
it through scripts/ensure-chromium.sh): a screenshot checked for the chart's bars at the
right heights and for the tables, and the DOM Chromium built checked for the right numbers."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from ndop_client import Client, NdopError
from ndop_core.proto import ndop_pb2, ndop_pb2_grpc
from ndop_server import audit_record as events
from ndop_server import keys as keyfile
from ndop_server.accounts import MODES, Accounts, Limits
from ndop_server.audit_chain import audit_key
from ndop_server.audit_record import AuditRecord
from ndop_server.audit_view import summarise
from ndop_server.server import RunningServer, start_server
from ndop_server.status_page import (
    CHART_COLOUR,
    HEADER_COLOUR,
    PLOT_HEIGHT,
    QUOTA_BAR_WIDTH,
    QUOTA_COLOURS,
    REASONS,
    AuditState,
    DayActivity,
    QuotaUse,
    RefusalCount,
    ServerState,
    StatusData,
    VersionPoint,
    nice_ceiling,
    register_chart,
    render_status,
)
from ndop_server.status_source import activity_tables
from ndop_server.store import Store
from tests.conftest import Register, write_numbers

WINDOW = (1280, 1900)
TIMEOUT = 30.0
SERVER = ServerState(
    version=3, count=800, store_reachable=True, open_checks=0, started_at="2026-11-25T09:00:00"
)


# --- reading pages and pictures ------------------------------------------------------------------


class Tables(HTMLParser):
    """Every table of a page by id: its rows of cell texts (header row first)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.texts: dict[str, str] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._element: list[tuple[str, str | None]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs).get("id")
        self._element.append((tag, found))
        if tag == "table" and found:
            self._table = found
            self.tables[found] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None
        while self._element and self._element.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        for _, found in self._element:
            if found:
                self.texts[found] = self.texts.get(found, "") + data


def rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def mask(picture: np.ndarray, colour: str, tolerance: int = 6) -> np.ndarray:
    """Where `picture` (height x width x 3) shows `colour`."""
    wanted = np.array(rgb(colour), dtype=np.int16)
    return np.asarray(np.abs(picture.astype(np.int16) - wanted).max(axis=2) <= tolerance)


def runs(flags: Any) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a one-dimensional array of flags."""
    found: list[tuple[int, int]] = []
    start = None
    for position, flag in enumerate([*np.asarray(flags, dtype=bool).tolist(), False]):
        if flag and start is None:
            start = position
        elif not flag and start is not None:
            found.append((start, position - start))
            start = None
    return found


def chromium(*args: str | Path, profile: Path) -> subprocess.CompletedProcess[str]:
    browser = shutil.which("chromium")
    assert browser, "Chromium is missing: run scripts/ensure-chromium.sh (make test does)"
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


# --- the renderer alone --------------------------------------------------------------------------


BASE = StatusData(
    generated_at="2026-11-25T10:00:00+00:00",
    days=7,
    server=SERVER,
    versions=[
        VersionPoint(1, "2026-11-20T08:00:00+00:00", 1000, 1000, 0),
        VersionPoint(2, "2026-11-21T08:00:00+00:00", 1500, 500, 0),
    ],
    audit=AuditState(True, 12, "2026-11-25T10:00:00+00:00"),
)


def _data(**changes: Any) -> StatusData:
    return dataclasses.replace(BASE, **changes)


def test_everything_printed_is_escaped() -> None:
    hostile = '<script>alert("x")</script>&<b>'
    page = render_status(
        _data(
            quotas=[QuotaUse(hostile, True, 1, 10, 1, 10, 0, 5)],
            activity=[DayActivity("2026-11-25", hostile, 1, 1, 0, 10, 0)],
            refusals=[RefusalCount("2026-11-25", hostile, "<img src=x>", 2)],
            audit=AuditState(False, 12, "2026-11-25T10:00:00+00:00", ("row 3 <i>altered</i>",)),
            store_error="<blink>",
        )
    )
    assert "<script" not in page and "<img" not in page and "<blink>" not in page
    assert "<b>" not in page and "<i>altered" not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&lt;b&gt;") == 3
    parsed = Tables(page)
    assert parsed.tables["quotas"][1][0] == hostile
    assert parsed.tables["refusals"][1][2:] == ["<img src=x>", "<img src=x>", "2"]


def test_the_chart_draws_one_bar_per_version_on_a_scale_from_zero() -> None:
    counts = (1000, 1500, 800)
    versions = [VersionPoint(v, "2026-11-20T08:00:00", c, 0, 0) for v, c in enumerate(counts, 1)]
    chart = register_chart(versions)
    bars = [
        int(piece.split('height="')[1].split('"')[0])
        for piece in chart.split("<rect")[1:]
        if 'class="bar"' in piece
    ]
    top = nice_ceiling(1500)
    assert top == 2000
    assert bars == [round(PLOT_HEIGHT * count / top) for count in counts]
    assert chart.count("<title>version ") == 3
    assert "No register version" in register_chart([])
    assert [nice_ceiling(v) for v in (0, 1, 3, 7, 10, 11, 2400, 3_500_000)] == [
        1,
        1,
        5,
        10,
        10,
        20,
        2500,
        5_000_000,
    ]


def test_the_audit_chain_state_reads_at_a_glance() -> None:
    intact = Tables(render_status(_data())).texts["audit-state"]
    assert intact.startswith("Audit chain intact: 12 rows verified")
    broken = Tables(
        render_status(
            _data(audit=AuditState(False, 40, "2026-11-25T10:00:00", ("row 7 was altered",) * 12))
        )
    ).texts["audit-state"]
    assert "BROKEN: 12 problems in 40 rows" in broken and "and 2 more" in broken
    assert "not checked yet" in Tables(render_status(_data(audit=None))).texts["audit-state"]


def test_quota_bars_turn_amber_then_red() -> None:
    page = render_status(
        _data(
            quotas=[
                QuotaUse("calm", True, 100, 1000, 0, 10, 0, 5),
                QuotaUse("busy", True, 850, 1000, 0, 10, 0, 5),
                QuotaUse("spent", True, 1000, 1000, 0, 10, 0, 5),
                QuotaUse("none", False, 0, 0, 0, 10, 0, 5),
            ]
        )
    )
    green, amber, red = (colour for colour, _ in QUOTA_COLOURS)
    assert f'width="{QUOTA_BAR_WIDTH // 10}" height="12" fill="{green}"' in page
    assert f'width="{round(QUOTA_BAR_WIDTH * 0.85)}" height="12" fill="{amber}"' in page
    assert f'width="{QUOTA_BAR_WIDTH}" height="12" fill="{red}"' in page
    rows = Tables(page).tables["quotas"]
    assert rows[4][0] == "none (revoked)" and rows[4][2] == "0 of 0 (no allowance)"
    assert rows[2][2] == "850 of 1,000 (85 %)"


# --- the activity the store counts ---------------------------------------------------------------


def _activity_from_lines(lines: list[AuditRecord]) -> tuple[list[DayActivity], list[RefusalCount]]:
    """The page's activity and refusals as they were computed before the store counted them:
    from every audit line of the period, read into Python."""
    counts: defaultdict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    refusals: Counter[tuple[str, str | None, str]] = Counter()
    for line in lines:
        day = line.at[:10]
        if line.outcome == events.AUTH_FAILED:
            refusals[day, None, line.outcome] += 1
            continue
        tally = counts[day, line.organisation]
        if line.outcome == events.FILTER_DOWNLOAD:
            tally["filters"] += 1
        elif line.mode in MODES:
            tally["checks"] += 1
            tally["numbers"] += line.items_checked
            if line.outcome == events.COMPLETED:
                tally["completed"] += 1
            elif line.outcome in REASONS:
                tally["refused"] += 1
                refusals[day, line.organisation, line.outcome] += 1
    activity = [
        DayActivity(
            day, organisation, t["checks"], t["completed"], t["refused"], t["numbers"], t["filters"]
        )
        for (day, organisation), t in counts.items()
    ]
    activity.sort(key=lambda row: ([-int(p) for p in row.day.split("-")], row.organisation))
    refused = [RefusalCount(*key, count) for key, count in refusals.items()]
    refused.sort(
        key=lambda row: ([-int(p) for p in row.day.split("-")], row.organisation or "", row.outcome)
    )
    return activity, refused


def test_the_store_counts_activity_as_the_audit_lines_read(
    store_location: str, tmp_path: Path
) -> None:
    """On either backend, the counts the database makes of a period's audit rows are the
    counts of its lines as `ndop audit` reads them, and the page's tables from them are
    those once made from the lines: checks completed, refused, cancelled and cut off; a
    check opened before the period; one open across midnight; reused ids; refusals at the
    door; filter downloads; refused credentials; a row whose clock was behind."""
    keys = keyfile.write_new(tmp_path / "keys.json")
    Store(store_location, create=True).close()
    ids: list[str] = []

    def row(
        at: str,
        organisation: str,
        check: int | None,
        outcome: str,
        items: int = 0,
        mode: str = "hashed",
    ) -> AuditRecord:
        while check is not None and len(ids) <= check:
            ids.append(str(uuid.uuid4()))
        return AuditRecord(
            at=f"2026-11-{at}+00:00",
            organisation=organisation,
            request_id="-" if check is None else ids[check],
            mode=mode,
            purpose="research",
            items_checked=items,
            items_opted_out=items // 2 if mode == "hashed" and outcome != "answered" else None,
            register_version=1,
            outcome=outcome,
        )

    rows = [
        # 0 and 1 open before the period; 0 answers on both sides of its start
        row("19T22:00:00.000", "north", 0, "started"),
        row("19T22:00:01.000", "north", 0, "answered", 5),
        row("19T23:00:00.000", "north", 1, "started", mode="private"),
        row("20T00:00:01.000", "north", 0, "answered", 3),
        row("20T00:00:02.000", "north", 0, "completed", 8),
        # completed, interrupted (answered on two days), a reused id, refused after a batch
        # (a started row holds the numbers the check reserved)
        row("20T09:00:00.000", "north", 2, "started", 10),
        row("20T09:00:01.000", "north", 2, "answered", 4),
        row("20T09:00:02.000", "north", 2, "answered", 6),
        row("20T09:00:03.000", "north", 2, "completed", 10),
        row("20T10:00:00.000", "south", 3, "started", 5, mode="private"),
        row("20T10:00:01.000", "south", 3, "answered", 2, mode="private"),
        row("20T10:00:02.000", "south", 3, "already-exists", mode="private"),
        row("20T11:00:00.000", "south", 4, "started"),
        row("20T11:00:01.000", "south", 4, "answered", 1),
        row("20T11:00:02.000", "south", 4, "resource-exhausted", 1),
        row("20T23:59:59.000", "north", 5, "started"),
        row("21T00:00:01.000", "south", 3, "answered", 3, mode="private"),
        row("21T00:00:02.000", "north", 5, "answered", 7),
        row("21T00:00:03.000", "north", 5, "completed", 7),
        # refused at the door, with an id and without one
        row("21T08:00:00.000", "frugal", 6, "resource-exhausted"),
        row("21T08:00:01.000", "frugal", None, "invalid-argument"),
        row("21T08:00:02.000", "frugal", None, "permission-denied", mode="private"),
        # filter downloads, one refused, and credentials refused
        row("21T08:30:00.000", "north", None, "filter-download", mode="filter"),
        row("21T08:30:01.000", "north", None, "filter-download", mode="filter"),
        row("21T08:30:02.000", "quiet", None, "resource-exhausted", mode="filter"),
        row("21T08:31:00.000", "-", None, "auth-failed"),
        row("21T08:31:01.000", "-", None, "auth-failed", mode="filter"),
        # cancelled (its closing total counts, not its batches'); one that only started;
        # 1 closes in the period
        row("21T12:00:00.000", "north", 7, "started"),
        row("21T12:00:01.000", "north", 7, "answered", 4),
        row("21T12:00:02.000", "north", 7, "cancelled", 6),
        row("21T13:00:00.000", "south", 8, "started", 10, mode="private"),
        row("21T14:00:00.000", "north", 1, "completed", 9, mode="private"),
        row("21T14:00:01.000", "north", 2, "already-exists"),
        row("22T08:00:00.000", "south", 9, "started"),
        row("22T08:00:01.000", "south", 9, "answered", 2),
        row("22T08:00:02.000", "south", 9, "unavailable", 2),
        # 7 closed a second time, the next day: a line of its own
        row("22T08:30:00.000", "north", 7, "aborted", 6),
        # another replica's clock was behind: 10 closes "before" the period it opened in
        row("22T09:00:00.000", "north", 10, "started"),
        row("22T09:00:01.000", "north", 10, "answered", 3),
        row("19T09:00:02.000", "north", 10, "completed", 3),
    ]
    since = "2026-11-20"
    with Accounts(store_location, audit_key(keys.store_key)) as accounts:
        for entry in rows:
            accounts.record(entry)
        counts = accounts.audit_counts(since)
        lines = summarise(accounts.audit(since=since))

    expected: Counter[tuple[str, str, str, str, str]] = Counter()
    for line in lines:
        key = (line.at[:10], line.organisation, line.mode, line.outcome)
        expected[(*key, "lines")] += 1
        expected[(*key, "items")] += line.items_checked
    counted: Counter[tuple[str, str, str, str, str]] = Counter()
    for count in counts:
        key = (count.day, count.organisation, count.mode, count.outcome)
        counted[(*key, "lines")] += count.lines
        counted[(*key, "items")] += count.items_checked
    assert counted == expected
    assert len(counts) == len({key[:4] for key in expected}), "one count per group"
    assert sum(count.lines for count in counts) == len(lines) == 21
    assert activity_tables(counts) == _activity_from_lines(lines)
    assert not any(request_id in repr(counts) for request_id in ids)


# --- a real server in a real browser -------------------------------------------------------------


@pytest.fixture
def busy_day(register: Register, token: str, tmp_path: Path) -> Iterator[RunningServer]:
    """Three register versions (1,000, 1,500 and 800 entries) and a day of checks: one
    organisation a quarter through its quota, one refused over quota, one revoked, one
    credential refused."""
    with Store(register.store_path) as store:
        added = write_numbers(tmp_path / "add.dat", register.not_opted_out[:500])
        register.publisher(store).apply_changes(added, None)
        removed = write_numbers(tmp_path / "remove.dat", register.opted_out[:700])
        register.publisher(store).apply_changes(None, removed)
    with Accounts(register.store_path) as accounts:
        north = accounts.add("north-trust", Limits(daily_quota=4000, rate_per_second=0))
        frugal = accounts.add("frugal", Limits(daily_quota=50, rate_per_second=0))
        accounts.add("gone")
        accounts.revoke("gone")
    running = start_server(
        register.store_path,
        register.keys,
        "127.0.0.1:0",
        tls=None,
        insecure=True,
        poll_seconds=0.1,
        metrics_listen="127.0.0.1:0",
    )
    address = f"127.0.0.1:{running.port}"
    everyone = np.concatenate([register.opted_out, register.not_opted_out])
    numbers = [f"{int(n):010d}" for n in everyone]
    try:
        with Client(address, token=north, purpose="research", insecure=True) as client:
            client.check(numbers[:1000], mode="hashed")
        with Client(address, token=token, purpose="planning", insecure=True) as client:
            client.check(numbers[:200], mode="private")
        with (
            Client(address, token=frugal, purpose="research", insecure=True) as client,
            pytest.raises(NdopError),
        ):
            client.check(numbers[:100], mode="hashed")
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError):
            ndop_pb2_grpc.OptOutRegisterStub(channel).GetRegisterInfo(
                ndop_pb2.GetRegisterInfoRequest(),
                metadata=(("authorization", f"Bearer ndop_{uuid.uuid4().hex}"),),
                timeout=5,
            )
        yield running
    finally:
        running.stop(grace=1)


def test_the_status_page_in_a_real_browser(busy_day: RunningServer, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{busy_day.metrics_port}/status"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as reply:
        assert reply.status == 200
    screenshot = tmp_path / "status.png"
    width, height = WINDOW
    chromium(
        f"--window-size={width},{height}",
        f"--screenshot={screenshot}",
        url,
        profile=tmp_path / "chromium-shot",
    )
    dom = chromium("--dump-dom", url, profile=tmp_path / "chromium-dom").stdout
    _check_dom(dom)
    _check_screenshot(np.asarray(Image.open(screenshot).convert("RGB")))


def _check_dom(dom: str) -> None:
    page = Tables(dom)
    assert page.texts["server"].startswith(
        "This server: serving register version 3 (800 opted out) · store reachable · 0 checks open"
    )
    versions = [row[:1] + row[2:] for row in page.tables["versions"][1:]]
    assert versions == [
        ["3", "800", "0", "-700"],
        ["2", "1,500", "+500", "0"],
        ["1", "1,000", "+1,000", "0"],
    ]
    quotas = {row[0]: row[2:] for row in page.tables["quotas"][1:]}
    assert quotas == {
        "frugal": ["0 of 50 (0 %)", "0 of 1,000 (0 %)", "0 of 100 (0 %)"],
        "gone (revoked)": ["0 of 2,000,000 (0 %)", "0 of 1,000 (0 %)", "0 of 100 (0 %)"],
        "north-trust": ["1,000 of 4,000 (25 %)", "1 of 1,000 (<1 %)", "0 of 100 (0 %)"],
        "test-org": [
            "200 of 50,000,000 (<1 %)",
            "1 of 1,000,000 (<1 %)",
            "1 of 1,000,000 (<1 %)",
        ],
    }
    activity = {row[1]: row[2:] for row in page.tables["activity"][1:]}
    assert activity == {
        "frugal": ["1", "0", "1", "0", "0"],
        "north-trust": ["1", "1", "0", "1,000", "0"],
        "test-org": ["1", "1", "0", "200", "1"],
    }
    refusals = sorted(row[1:] for row in page.tables["refusals"][1:])
    assert refusals == [
        ["frugal", "over a daily limit", "resource-exhausted", "1"],
        ["not identified", "credential refused", "auth-failed", "1"],
    ]
    assert page.texts["audit-state"].startswith("Audit chain intact: ")
    assert "<script" not in dom


def _check_screenshot(picture: np.ndarray) -> None:
    """The chart's bars where the chart is, at the heights of 1,000, 1,500 and 800 entries on
    a scale to 2,000; four tables with header rows below it; north-trust's quarter-full bar."""
    assert picture.shape[:2] == (WINDOW[1], WINDOW[0])
    blue = mask(picture, CHART_COLOUR)
    columns = np.flatnonzero(blue.any(axis=0))
    rows = np.flatnonzero(blue.any(axis=1))
    assert len(columns), "no chart bar on screen"
    content_left = (WINDOW[0] - 1000) // 2  # main: 960 px wide plus 20 px padding each side
    assert content_left + 20 <= columns[0] and columns[-1] <= content_left + 20 + 900
    assert rows[0] >= 60 and rows[-1] <= 450, "the chart sits near the top"
    bars = runs(blue.any(axis=0))
    assert len(bars) == 3, bars
    heights = [int(blue[:, start + length // 2].sum()) for start, length in bars]
    expected = [round(PLOT_HEIGHT * count / 2000) for count in (1000, 1500, 800)]
    assert all(abs(h - e) <= 1 for h, e in zip(heights, expected, strict=True)), (
        heights,
        expected,
    )
    bottoms = {int(np.flatnonzero(blue[:, start + length // 2])[-1]) for start, length in bars}
    assert len(bottoms) == 1, "every bar stands on the same baseline"

    # Header rows fill the tables' width; their first pixels are cell padding, never text.
    header = mask(picture, HEADER_COLOUR, tolerance=3)
    table_left = content_left + 20
    header_rows = runs(header[:, table_left + 1 : table_left + 6].all(axis=1))
    assert len(header_rows) == 4, header_rows  # versions, quotas, activity, refusals
    assert header_rows[0][0] > rows[-1], "the tables come below the chart"
    assert all(length >= 20 for _, length in header_rows), header_rows

    green = mask(picture, QUOTA_COLOURS[0][0], tolerance=3)
    quarter = round(QUOTA_BAR_WIDTH * 0.25)
    widths = green.sum(axis=1)
    quota_rows = [y for y in range(picture.shape[0]) if abs(int(widths[y]) - quarter) <= 1]
    assert len(quota_rows) == 12, (quarter, sorted(set(widths.tolist())))
    assert header_rows[1][0] < quota_rows[0] < header_rows[2][0], "in the quota table"
