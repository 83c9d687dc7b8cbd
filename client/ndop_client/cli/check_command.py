"""`ndop check`: clear a cohort file of opted-out patients."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ndop_client import report
from ndop_client.client import MODES, Client
from ndop_client.progress import for_stream
from ndop_client.stall import DEFAULT_STALL_SECONDS
from ndop_core import settings
from ndop_core.cohort_files import FORMAT_CHOICES
from ndop_core.errors import UsageError
from ndop_core.input_stream import ENCODINGS, STDIN
from ndop_core.purposes import PURPOSES


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, metavar="HOST:PORT")
    parser.add_argument("--insecure", action="store_true", help="plaintext (local development)")
    parser.add_argument("--ca-file", help="CA certificate to verify the server")
    parser.add_argument("--cert", help="client certificate for mutual TLS")
    parser.add_argument("--key", help="client key for mutual TLS")
    parser.add_argument("--token", help="organisation API token (default: $NDOP_TOKEN)")
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=DEFAULT_STALL_SECONDS,
        metavar="SECONDS",
        help="give up when the server owes an answer and sends nothing for this long "
        f"(default {DEFAULT_STALL_SECONDS:g})",
    )


def add_check_command(commands: Any) -> None:
    parser = commands.add_parser(
        "check",
        help="clear a cohort file of opted-out patients",
        description="Check a cohort (.dat, .csv, .tsv or one number per line, optionally "
        "gzipped; - for standard input) and write the rows that are valid and not opted out "
        "to --out (- for standard output), in the same format. Every option can also come "
        "from NDOP_<OPTION> in the environment (NDOP_SERVER, NDOP_CA_FILE, NDOP_PURPOSE, ...).",
    )
    parser.add_argument("input", metavar="INPUT")
    add_connection_options(parser)
    parser.add_argument("--out", required=True, metavar="CLEARED")
    parser.add_argument("--mode", choices=MODES, default="private")
    parser.add_argument("--report", metavar="REPORT.json", help="the JSON report (- for stdout)")
    parser.add_argument(
        "--receipt", metavar="RECEIPT.json", help="the signed receipt (default: beside the report)"
    )
    parser.add_argument("--column", metavar="NAME", help="NHS number column of a CSV or TSV")
    parser.add_argument(
        "--format", choices=FORMAT_CHOICES, help="the input's format (default: from its name)"
    )
    parser.add_argument(
        "--encoding",
        default="utf-8",
        metavar="NAME",
        help=f"the input's encoding: {', '.join(sorted(set(ENCODINGS.values())))} (default utf-8)",
    )
    parser.add_argument(
        "--max-invalid-rate",
        type=_rate,
        metavar="FRACTION",
        help="refuse to check (exit 2, nothing sent) when more than this share of the rows "
        "are not valid NHS numbers, e.g. 0.05",
    )
    parser.add_argument(
        "--purpose",
        required=True,
        choices=PURPOSES,
        help="why the data is checked, recorded in the audit log and the receipt",
    )
    parser.add_argument("--workers", type=int, help="processes for private mode (default: cores)")
    parser.set_defaults(handler=run_check)
    settings.environment_defaults(parser)


def _rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number between 0 and 1") from None
    if not 0 <= rate <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number between 0 and 1")
    return rate


def run_check(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
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
        stall_timeout=args.stall_timeout,
    ) as client:
        check = client.check_file(
            args.input,
            args.out,
            mode=args.mode,
            column=args.column,
            purpose=args.purpose,
            report_path=args.report,
            receipt_path=args.receipt,
            encoding=args.encoding,
            format=args.format,
            max_invalid_rate=args.max_invalid_rate,
            progress=for_stream(sys.stderr),
        )
    result = check.report
    stdout_taken = STDIN in (str(args.out), str(args.report))
    summary = sys.stderr if stdout_taken else sys.stdout
    for line in report.summary_lines(result):
        print(line, file=summary)
    if "receipt" in result:
        print(f"signed receipt -> {result['receipt']}", file=summary)
    for line in report.warnings(result):
        print(f"ndop: {line}", file=sys.stderr)
    return 0
