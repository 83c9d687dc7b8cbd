"""Operator commands for access control: organisations, quotas, the audit log, dev certificates."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from ndop_server import keys as keyfile
from ndop_server.accounts import DEFAULT_LIMITS, Accounts, Limits, Usage
from ndop_server.audit_view import summarise
from ndop_server.devcerts import make_dev_certificates
from ndop_server.errors import ConfigurationError
from ndop_server.locations import StoreLocation, store_location

LIMIT_OPTIONS: Final = (
    ("--daily-quota", "daily_quota", "numbers per UTC day, both modes together"),
    ("--rate", "rate_per_second", "numbers per second (0: no limit)"),
    ("--daily-checks", "daily_checks", "checks per UTC day"),
    ("--daily-filter-downloads", "daily_filter_downloads", "filter downloads per UTC day"),
)


def _limit_options(parser: argparse.ArgumentParser, defaults: Limits | None) -> None:
    for flag, field_name, what in LIMIT_OPTIONS:
        default = getattr(defaults, field_name) if defaults else None
        suffix = f" (default {default:,})" if default is not None else ""
        parser.add_argument(flag, type=int, dest=field_name, default=default, help=what + suffix)


def add_access_commands(commands: Any) -> None:
    org = commands.add_parser("org", help="organisations allowed to check").add_subparsers(
        dest="org_command", required=True
    )
    add = org.add_parser("add", help="create an organisation and print its token once")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--store", type=store_location, required=True)
    _limit_options(add, DEFAULT_LIMITS)
    add.set_defaults(handler=_org_add)

    listing = org.add_parser("list", help="organisations, their limits, today's use, status")
    listing.add_argument("--store", type=store_location, required=True)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_org_list)

    revoke = org.add_parser("revoke", help="revoke an organisation's token and certificate")
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument("--store", type=store_location, required=True)
    revoke.set_defaults(handler=_org_revoke)

    token = org.add_parser("token", help="issue an organisation a new token")
    token.add_argument("name", metavar="NAME")
    token.add_argument("--store", type=store_location, required=True)
    token.add_argument(
        "--rotate", action="store_true", required=True, help="replace the token with a new one"
    )
    token.add_argument(
        "--grace-hours",
        type=float,
        default=0.0,
        metavar="HOURS",
        help="how long the old token keeps working (default 0: refused at once)",
    )
    token.set_defaults(handler=_org_token)

    reinstate = org.add_parser("reinstate", help="make a revoked organisation active again")
    reinstate.add_argument("name", metavar="NAME")
    reinstate.add_argument("--store", type=store_location, required=True)
    reinstate.set_defaults(handler=_org_reinstate)

    quota = org.add_parser("quota", help="change an organisation's limits (open checks too)")
    quota.add_argument("name", metavar="NAME")
    quota.add_argument("--store", type=store_location, required=True)
    _limit_options(quota, None)
    quota.set_defaults(handler=_org_quota)

    audit = commands.add_parser("audit", help="the audit log: read it, or verify its chain")
    audit.add_argument("--store", type=store_location)
    audit.add_argument("--org", metavar="NAME")
    audit.add_argument("--since", metavar="DATE", help="ISO date or time (UTC)")
    audit.add_argument("--json", action="store_true")
    audit.add_argument("--events", action="store_true", help="every row, not one line per check")
    audit.set_defaults(handler=_audit)
    verify = audit.add_subparsers(dest="audit_command").add_parser(
        "verify", help="check the audit log's hash chain; says which rows were tampered with"
    )
    verify.add_argument("--store", type=store_location, required=True)
    verify.add_argument("--keys", type=Path, required=True)
    verify.set_defaults(handler=_audit_verify)

    certs = commands.add_parser("dev-certs", help="local CA and certificates for trying TLS")
    certs.add_argument("directory", type=Path, metavar="DIR")
    certs.add_argument(
        "--org", action="append", default=[], metavar="NAME", help="client certificate for NAME"
    )
    certs.set_defaults(handler=_dev_certs)


def _accounts(store: StoreLocation | None) -> Accounts:
    """The store's accounts; only `ndop register load` creates a store, so a mistyped
    --store is an error here, not a new empty store with a token that works nowhere."""
    if store is None:
        raise ConfigurationError("give --store STORE")
    return Accounts(store)


def _limits_given(args: argparse.Namespace) -> dict[str, int]:
    return {
        field_name: getattr(args, field_name)
        for _, field_name, _ in LIMIT_OPTIONS
        if getattr(args, field_name) is not None
    }


def _limits_text(limits: Limits) -> str:
    return (
        f"{limits.daily_quota:,} numbers, {limits.daily_checks:,} checks, "
        f"{limits.daily_filter_downloads:,} filter downloads; rate {limits.rate_per_second:,}/s"
    )


def _org_add(args: argparse.Namespace) -> int:
    limits = Limits(**_limits_given(args))
    with _accounts(args.store) as accounts:
        token = accounts.add(args.name, limits)
    print(f"created organisation {args.name} (per day: {_limits_text(limits)})")
    _print_token(token)
    return 0


def _org_list(args: argparse.Namespace) -> int:
    with _accounts(args.store) as accounts:
        usage = accounts.usage_by_organisation()
        rows = [(o, usage.get(o.name, Usage(0, 0, 0))) for o in accounts.organisations()]
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": o.name,
                        "created_at": o.created_at,
                        "revoked_at": o.revoked_at,
                        "limits": asdict(o.limits),
                        "today": asdict(used),
                    }
                    for o, used in rows
                ],
                indent=2,
            )
        )
        return 0
    print(
        f"{'organisation':<28} {'numbers today':>22} {'checks today':>14} "
        f"{'filters today':>13} {'rate/s':>10}  status"
    )
    for o, used in rows:
        status = f"revoked {o.revoked_at}" if o.revoked_at else "active"
        limits = o.limits
        print(
            f"{o.name:<28} {f'{used.numbers:,}/{limits.daily_quota:,}':>22} "
            f"{f'{used.checks:,}/{limits.daily_checks:,}':>14} "
            f"{f'{used.filters:,}/{limits.daily_filter_downloads:,}':>13} "
            f"{limits.rate_per_second:>10,}  {status}"
        )
    return 0


def _org_revoke(args: argparse.Namespace) -> int:
    with _accounts(args.store) as accounts:
        accounts.revoke(args.name)
    print(f"revoked organisation {args.name}; its open checks stop at their next batch")
    return 0


def _print_token(token: str) -> None:
    print("its API token, shown this once (store it in a secret manager, pass it as NDOP_TOKEN):")
    print(token)


def _org_token(args: argparse.Namespace) -> int:
    if args.grace_hours < 0:
        raise ConfigurationError("--grace-hours cannot be negative")
    with _accounts(args.store) as accounts:
        token = accounts.rotate_token(args.name, timedelta(hours=args.grace_hours))
    old = (
        f"the old token works for {args.grace_hours:g} more hours"
        if args.grace_hours
        else "the old token is refused from now on"
    )
    print(f"issued {args.name} a new token; {old}")
    _print_token(token)
    return 0


def _org_reinstate(args: argparse.Namespace) -> int:
    with _accounts(args.store) as accounts:
        token = accounts.reinstate(args.name)
    print(f"reinstated organisation {args.name} with a new token; its old token stays refused")
    _print_token(token)
    return 0


def _org_quota(args: argparse.Namespace) -> int:
    changes = _limits_given(args)
    if not changes:
        raise ConfigurationError(
            "say what to change: " + ", ".join(flag for flag, _, _ in LIMIT_OPTIONS)
        )
    with _accounts(args.store) as accounts:
        organisation = accounts.set_limits(args.name, **changes)
    print(
        f"{args.name}: per day {_limits_text(organisation.limits)} "
        "(open checks follow at their next batch)"
    )
    return 0


def _since(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"--since {text!r} is not an ISO date or time, e.g. 2026-11-01 or 2026-11-01T09:30"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _audit(args: argparse.Namespace) -> int:
    with _accounts(args.store) as accounts:
        records = accounts.audit(args.org, _since(args.since))
    lines = records if args.events else summarise(records)
    if args.json:
        print(json.dumps([asdict(line) for line in lines], indent=2))
        return 0
    print(
        f"{'time (UTC)':<29} {'organisation':<20} {'mode':<8} {'purpose':<12} "
        f"{'checked':>10} {'opted out':>10} {'version':>8}  outcome  request"
    )
    for r in lines:
        opted = "-" if r.items_opted_out is None else f"{r.items_opted_out:,}"
        print(
            f"{r.at:<29} {r.organisation:<20} {r.mode:<8} {r.purpose:<12} "
            f"{r.items_checked:>10,} {opted:>10} {r.register_version:>8}  {r.outcome}  "
            f"{r.request_id}"
        )
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    keys = keyfile.load(args.keys)
    with _accounts(args.store) as accounts:
        report = accounts.verify_audit(keys.audit_key)
    for problem in report.problems:
        print(f"ndop: audit log tampered: {problem}", file=sys.stderr)
    if not report.intact:
        return 1
    older = f"; {report.unchained:,} older rows predate the chain" if report.unchained else ""
    print(
        f"audit chain intact: {report.rows:,} rows, last row {report.last_id}, "
        f"head {report.head.hex()[:16]}{older}"
    )
    print("note the head: rows removed from the end can only be noticed against an earlier note")
    return 0


def _dev_certs(args: argparse.Namespace) -> int:
    made = make_dev_certificates(args.directory, args.org or ["demo-org"])
    print(f"CA certificate      {made.ca.cert}   (give clients --ca-file this)")
    print(
        f"server certificate  {made.server.cert} / {made.server.key}   (localhost, 127.0.0.1, ::1)"
    )
    for name, issued in made.clients.items():
        print(f"client {name:<12} {issued.cert} / {issued.key}")
    print("for development only: these expire in 30 days and the CA key sits beside them")
    return 0
