"""The figures behind the status page, read from the shared store and this server.

Organisation figures come from the store (usage and the audit log), so every replica shows the
same page. Reading them is cheap but not free, so a page is reused for a few seconds; walking
the whole audit chain is not cheap, so its result is kept for minutes.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Final

import structlog

from ndop_server import audit_record as events
from ndop_server.accounts import MODES, Accounts, AuditCount, Usage, today
from ndop_server.errors import StoreError
from ndop_server.locations import StoreLocation
from ndop_server.metrics import ServerMetrics
from ndop_server.register_view import RegisterHolder
from ndop_server.status_page import (
    REASONS,
    AuditState,
    DayActivity,
    QuotaUse,
    RefusalCount,
    ServerState,
    StatusData,
    VersionPoint,
)
from ndop_server.store import Store

log = structlog.get_logger("ndop.server")
STORE_UNREADABLE: Final = (
    "The register store cannot be read just now, so the figures below may be missing or old."
)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class StatusSource:
    """Gathers `StatusData`; safe to call from several request threads."""

    def __init__(
        self,
        store: StoreLocation,
        accounts: Accounts,
        holder: RegisterHolder,
        metrics: ServerMetrics,
        audit_key: bytes,
        *,
        days: int = 7,
        versions: int = 60,
        refresh_seconds: float = 5.0,
        audit_check_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._accounts = accounts
        self._holder = holder
        self._metrics = metrics
        self._audit_key = audit_key
        self.days = days
        self._versions = versions
        self._refresh_seconds = refresh_seconds
        self._audit_check_seconds = audit_check_seconds
        self._clock = clock
        self._started_at = _utc_now()
        self._lock = threading.Lock()
        self._page: tuple[float, StatusData] | None = None
        self._audit: tuple[float, AuditState] | None = None
        self._register: Store | None = None
        """The store's versions, opened at the first page and kept until `close`."""

    def data(self) -> StatusData:
        with self._lock:
            now = self._clock()
            if self._page is not None and now - self._page[0] < self._refresh_seconds:
                return self._page[1]
            data = self._gather(now)
            self._page = (now, data)
            return data

    def close(self) -> None:
        with self._lock:
            if self._register is not None:
                self._register.close()
                self._register = None

    def _server_state(self) -> ServerState:
        view = self._holder.current
        return ServerState(
            version=0 if view is None else view.version,
            count=0 if view is None else view.record.count,
            store_reachable=self._holder.reachable,
            open_checks=self._metrics.open_check_count(),
            started_at=self._started_at,
        )

    def _gather(self, now: float) -> StatusData:
        first_day = today() - timedelta(days=self.days - 1)
        try:
            if self._register is None:
                self._register = Store(self._store)
            history = self._register.history(self._versions)
            quotas = self._quotas()
            activity, refusals = activity_tables(self._accounts.audit_counts(first_day.isoformat()))
            audit = self._audit_state(now)
        except StoreError as exc:
            log.warning("status.store_unavailable", reason=str(exc))
            return StatusData(
                generated_at=_utc_now(),
                days=self.days,
                server=self._server_state(),
                audit=None if self._audit is None else self._audit[1],
                store_error=STORE_UNREADABLE,
            )
        return StatusData(
            generated_at=_utc_now(),
            days=self.days,
            server=self._server_state(),
            versions=[
                VersionPoint(r.version, r.published_at, r.count, r.added, r.removed)
                for r in reversed(history)
            ],
            activity=activity,
            quotas=quotas,
            refusals=refusals,
            audit=audit,
        )

    def _quotas(self) -> list[QuotaUse]:
        quotas = []
        usage = self._accounts.usage_by_organisation()
        for organisation in self._accounts.organisations():
            used = usage.get(organisation.name, Usage(0, 0, 0))
            limits = organisation.limits
            quotas.append(
                QuotaUse(
                    organisation=organisation.name,
                    active=organisation.revoked_at is None,
                    numbers_used=used.numbers,
                    numbers_limit=limits.daily_quota,
                    checks_used=used.checks,
                    checks_limit=limits.daily_checks,
                    filters_used=used.filters,
                    filters_limit=limits.daily_filter_downloads,
                )
            )
        return quotas

    def _audit_state(self, now: float) -> AuditState:
        if self._audit is not None and now - self._audit[0] < self._audit_check_seconds:
            return self._audit[1]
        report = self._accounts.verify_audit(self._audit_key)
        state = AuditState(
            intact=report.intact,
            rows=report.rows,
            checked_at=_utc_now(),
            problems=tuple(report.problems),
        )
        if not report.intact:
            log.warning("status.audit_chain_broken", problems=len(report.problems))
        self._audit = (now, state)
        return state


def activity_tables(
    counts: Iterable[AuditCount],
) -> tuple[list[DayActivity], list[RefusalCount]]:
    """Checks, numbers and filter downloads per day and organisation, and refusals, from the
    audit log's lines counted by the store (a check counts on the day it opened)."""
    tallies: defaultdict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    refusals: Counter[tuple[str, str | None, str]] = Counter()
    for count in counts:
        day, lines = count.day, count.lines
        if count.outcome == events.AUTH_FAILED:
            refusals[day, None, count.outcome] += lines
            continue
        tally = tallies[day, count.organisation]
        if count.outcome == events.FILTER_DOWNLOAD:
            tally["filters"] += lines
        elif count.mode in MODES:
            tally["checks"] += lines
            tally["numbers"] += count.items_checked
            if count.outcome == events.COMPLETED:
                tally["completed"] += lines
            elif count.outcome in REASONS:
                tally["refused"] += lines
                refusals[day, count.organisation, count.outcome] += lines
    activity = [
        DayActivity(
            day=day,
            organisation=organisation,
            checks=tally["checks"],
            completed=tally["completed"],
            refused=tally["refused"],
            numbers=tally["numbers"],
            filter_downloads=tally["filters"],
        )
        for (day, organisation), tally in tallies.items()
    ]
    activity.sort(key=lambda row: (_descending(row.day), row.organisation))
    refused = [
        RefusalCount(day, organisation, outcome, count)
        for (day, organisation, outcome), count in refusals.items()
    ]
    refused.sort(key=lambda row: (_descending(row.day), row.organisation or "", row.outcome))
    return activity, refused


def _descending(day: str) -> tuple[int, ...]:
    """Sort key putting later ISO days first."""
    return tuple(-int(part) for part in day.split("-") if part.isdigit())
