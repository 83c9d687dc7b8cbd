"""ndop client SDK: check a cohort against the national data opt-out register.

import ndop_client
with ndop_client.Client("localhost:50051", ca_file="ca.pem", purpose="research") as client:
    result = client.check(["999 000 0018", "9990000026"])

The names below load on first use (PEP 562), so that the `ndop` command can configure its
process (see ndop_client.cli) before NumPy and gRPC load.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING

# gRPC's C core logs informational lines (a failed TLS handshake, say) to stderr on its own;
# errors here are reported as one sentence instead. Read when gRPC loads, so set before it.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

if TYPE_CHECKING:
    from ndop_client.client import Client as Client
    from ndop_client.register_info import RegisterInfo as RegisterInfo
    from ndop_client.results import CheckResult as CheckResult
    from ndop_client.results import Status as Status
    from ndop_core.cohort_files import InvalidRow as InvalidRow
    from ndop_core.errors import AuthenticationFailed as AuthenticationFailed
    from ndop_core.errors import InputError as InputError
    from ndop_core.errors import IntegrityError as IntegrityError
    from ndop_core.errors import NdopError as NdopError
    from ndop_core.errors import PermissionDenied as PermissionDenied
    from ndop_core.errors import QuotaExceeded as QuotaExceeded
    from ndop_core.errors import ReceiptInvalid as ReceiptInvalid
    from ndop_core.errors import RequestRejected as RequestRejected
    from ndop_core.errors import ServerUnavailable as ServerUnavailable
    from ndop_core.errors import ServiceError as ServiceError
    from ndop_core.errors import UsageError as UsageError

_HOMES = {
    "Client": "ndop_client.client",
    "RegisterInfo": "ndop_client.register_info",
    "CheckResult": "ndop_client.results",
    "Status": "ndop_client.results",
    "InvalidRow": "ndop_core.cohort_files",
    **dict.fromkeys(
        (
            "AuthenticationFailed",
            "InputError",
            "IntegrityError",
            "NdopError",
            "PermissionDenied",
            "QuotaExceeded",
            "ReceiptInvalid",
            "RequestRejected",
            "ServerUnavailable",
            "ServiceError",
            "UsageError",
        ),
        "ndop_core.errors",
    ),
}

__all__ = [
    "AuthenticationFailed",
    "CheckResult",
    "Client",
    "InputError",
    "IntegrityError",
    "InvalidRow",
    "NdopError",
    "PermissionDenied",
    "QuotaExceeded",
    "ReceiptInvalid",
    "RegisterInfo",
    "RequestRejected",
    "ServerUnavailable",
    "ServiceError",
    "Status",
    "UsageError",
]

if not TYPE_CHECKING:
    # Hidden from type checkers, which read the imports above: a module __getattr__ would
    # make every misspelt name look valid to them.

    def __getattr__(name: str) -> object:
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module 'ndop_client' has no attribute {name!r}")
        value = getattr(import_module(home), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_HOMES})
