"""Errors raised by the operator side. They share the client's hierarchy so the CLI maps them
to one sentence and an exit code the same way."""

from __future__ import annotations

from ndop_core.errors import NdopError, UsageError


class ConfigurationError(UsageError):
    """Keys, store or options are missing or do not fit together."""


class StoreError(NdopError):
    """The register store cannot be opened or is not in a usable state."""

    exit_code = 2
