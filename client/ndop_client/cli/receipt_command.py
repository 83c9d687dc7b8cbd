"""`ndop receipt verify`: check a compliance receipt against the register's public key."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ndop_core import receipts


def add_receipt_command(commands: Any) -> None:
    receipt = commands.add_parser("receipt", help="compliance receipts").add_subparsers(
        dest="receipt_command", required=True
    )
    verify = receipt.add_parser("verify", help="verify a receipt's signature and contents")
    verify.add_argument("receipt", type=Path, metavar="RECEIPT")
    verify.add_argument(
        "--public-key",
        required=True,
        metavar="KEY",
        help="the register's key as printed by 'ndop keys public' (hex, or a file holding it)",
    )
    verify.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    statement = receipts.verify_file(args.receipt, receipts.read_public_key(args.public_key))
    print("receipt verified: signed by the register key, contents unaltered")
    print(json.dumps(statement, indent=2))
    return 0
