"""ndop client SDK: check a cohort against the national data opt-out register.

import ndop_client
with ndop_client.Client("localhost:50051", ca_file="ca.pem", purpose="research") as client:
    result = client.check(["999 000 0018", "9990000026"])
"""

import os

# gRPC's C core logs informational lines (a failed TLS handshake, say) to stderr on its own;
# errors here are reported as one sentence instead. Read when gRPC loads, so set before it.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from ndop_client.client import Client
from ndop_client.register_info import RegisterInfo
from ndop_client.results import CheckResult, Status
from ndop_core.cohort_files import InvalidRow
from ndop_core.errors import (
    AuthenticationFailed,
    InputError,
    IntegrityError,
    NdopError,
    PermissionDenied,
    QuotaExceeded,
    ReceiptInvalid,
    RequestRejected,
    ServerUnavailable,
    ServiceError,
    UsageError,
)

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
