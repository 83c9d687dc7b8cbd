"""`ndop check`: clear a cohort file of opted-out patients."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ndop_client import report
from ndop_client.client import MODES, Client
from ndop_client.progress import for_stream
from ndop_core.errors import UsageError
from ndop_core.purposes import PURPOSES


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, metavar="HOST:PORT")
    parser.add_argument("--insecure", action="store_true", help="plaintext (local development)")
    parser.add_argument("--ca-file", type=Path, help="CA certificate to verify the server")
    parser.add_argument("--cert", type=Path, help="client certificate for mutual TLS")
    parser.add_argument("--key", type=Path, help="client key for mutual TLS")
    parser.add_argument("--token", help="organisation API token (default: $NDOP_TOKEN)")


def add_check_command(commands: Any) -> None:
    parser = commands.add_parser(
        "check",
        help="clear a cohort file of opted-out patients",
        description="Check a cohort (.dat, .csv or one number per line) and write the rows "
        "that are valid and not opted out to --out, in the same format.",
    )
    parser.add_argument("input", type=Path, metavar="INPUT")
    add_connection_options(parser)
    parser.add_argument("--out", type=Path, required=True, metavar="CLEARED")
    parser.add_argument("--mode", choices=MODES, default="private")
    parser.add_argument("--report", type=Path, metavar="REPORT.json")
    parser.add_argument("--column", metavar="NAME", help="NHS number column of a .csv input")
    parser.add_argument(
        "--purpose",
        required=True,
        choices=PURPOSES,
        help="why the data is checked, recorded in the audit log and the receipt",
    )
    parser.add_argument("--workers", type=int, help="processes for private mode (default: cores)")
    parser.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    if args.out.resolve() == args.input.resolve():
        raise UsageError("--out must not be the input file")
    for option, path in (("--out", args.out), ("--report", args.report)):
        if path is not None:
            _require_writable_directory(option, path)
    token = args.token or os.environ.get("NDOP_TOKEN")
    with Client(
        args.server,
        insecure=args.insecure,
        ca_file=args.ca_file,
        client_cert=args.cert,
        client_key=args.key,
        token=token,
        purpose=args.purpose,
        workers=args.workers,
    ) as client:
        check = client.check_file(
            args.input,
            args.out,
            mode=args.mode,
            column=args.column,
            purpose=args.purpose,
            progress=for_stream(sys.stderr),
        )
    result = report.save(check, args.purpose, args.report)
    for line in report.summary_lines(result):
        print(line)
    if "receipt" in result:
        print(f"signed receipt -> {result['receipt']}")
    return 0


def _require_writable_directory(option: str, path: Path) -> None:
    """Refuse before any work when an output cannot be written, rather than after."""
    directory = path.parent
    if not directory.is_dir() or not os.access(directory, os.W_OK):
        raise UsageError(
            f"{option} {path}: directory {directory} does not exist or is not writable"
        )
