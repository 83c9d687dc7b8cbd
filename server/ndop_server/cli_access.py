"""Operator commands for access control: organisations, quotas, the audit log, dev certificates."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ndop_server.accounts import DEFAULT_DAILY_QUOTA, MODES, Accounts
from ndop_server.devcerts import make_dev_certificates
from ndop_server.store import Store


def add_access_commands(commands: Any) -> None:
    org = commands.add_parser("org", help="organisations allowed to check").add_subparsers(
        dest="org_command", required=True
    )
    add = org.add_parser("add", help="create an organisation and print its token once")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--store", type=Path, required=True)
    add.add_argument(
        "--daily-quota",
        type=int,
        default=DEFAULT_DAILY_QUOTA,
        help=f"numbers per UTC day in each mode (default {DEFAULT_DAILY_QUOTA:,})",
    )
    add.add_argument("--hashed-quota", type=int, help="override the daily quota for hashed mode")
    add.add_argument("--private-quota", type=int, help="override the daily quota for private mode")
    add.set_defaults(handler=_org_add)

    listing = org.add_parser("list", help="organisations, their quotas and whether revoked")
    listing.add_argument("--store", type=Path, required=True)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_org_list)

    revoke = org.add_parser("revoke", help="revoke an organisation's token and certificate")
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument("--store", type=Path, required=True)
    revoke.set_defaults(handler=_org_revoke)

    quota = org.add_parser("quota", help="change an organisation's daily quota")
    quota.add_argument("name", metavar="NAME")
    quota.add_argument("--store", type=Path, required=True)
    quota.add_argument("--daily-quota", type=int, required=True)
    quota.add_argument("--mode", choices=MODES, help="only this mode (default: both)")
    quota.set_defaults(handler=_org_quota)

    audit = commands.add_parser("audit", help="print the audit log")
    audit.add_argument("--store", type=Path, required=True)
    audit.add_argument("--org", metavar="NAME")
    audit.add_argument("--since", metavar="DATE", help="ISO date or time (UTC)")
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(handler=_audit)

    certs = commands.add_parser("dev-certs", help="local CA and certificates for trying TLS")
    certs.add_argument("directory", type=Path, metavar="DIR")
    certs.add_argument(
        "--org", action="append", default=[], metavar="NAME", help="client certificate for NAME"
    )
    certs.set_defaults(handler=_dev_certs)


def _accounts(store: Path) -> Accounts:
    Store(store, create=True).close()
    return Accounts(store)


def _org_add(args: argparse.Namespace) -> int:
    hashed = args.hashed_quota if args.hashed_quota is not None else args.daily_quota
    private = args.private_quota if args.private_quota is not None else args.daily_quota
    with _accounts(args.store) as accounts:
        token = accounts.add(args.name, hashed, private)
    print(f"created organisation {args.name} (daily quota: hashed {hashed:,}, private {private:,})")
    print("its API token, shown this once (store it in a secret manager, pass it as NDOP_TOKEN):")
    print(token)
    return 0


def _org_list(args: argparse.Namespace) -> int:
    with _accounts(args.store) as accounts:
        organisations = accounts.organisations()
    if args.json:
        print(json.dumps([asdict(o) for o in organisations], indent=2))
        return 0
    print(f"{'organisation':<30} {'hashed/day':>12} {'private/day':>12}  status")
    for o in organisations:
        status = f"revoked {o.revoked_at}" if o.revoked_at else "active"
        print(f"{o.name:<30} {o.hashed_daily_quota:>12,} {o.private_daily_quota:>12,}  {status}")
    return 0


def _org_revoke(args: argparse.Namespace) -> int:
    with _accounts(args.store) as accounts:
        accounts.revoke(args.name)
    print(f"revoked organisation {args.name}")
    return 0


def _org_quota(args: argparse.Namespace) -> int:
    with _accounts(args.store) as accounts:
        accounts.set_quota(args.name, args.mode, args.daily_quota)
    print(f"{args.name}: daily quota {args.daily_quota:,} for {args.mode or 'both modes'}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    with _accounts(args.store) as accounts:
        records = accounts.audit(args.org, args.since)
    if args.json:
        print(json.dumps([asdict(r) for r in records], indent=2))
        return 0
    print(
        f"{'time (UTC)':<29} {'organisation':<20} {'mode':<8} {'purpose':<12} "
        f"{'checked':>10} {'opted out':>10} {'version':>8}  outcome  request"
    )
    for r in records:
        opted = "-" if r.items_opted_out is None else f"{r.items_opted_out:,}"
        print(
            f"{r.at:<29} {r.organisation:<20} {r.mode:<8} {r.purpose:<12} "
            f"{r.items_checked:>10,} {opted:>10} {r.register_version:>8}  {r.outcome}  "
            f"{r.request_id}"
        )
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
