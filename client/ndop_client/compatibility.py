"""Negotiation: refuse a server that speaks a scheme, suite or size this client does not.

A check uses one mode, so only that mode's parameters are compared: a server publishing an
unfamiliar filter scheme can still answer hashed checks.
"""

from __future__ import annotations

from ndop_client.register_info import RegisterInfo
from ndop_core import filter as published_filter
from ndop_core.errors import UnsupportedServer
from ndop_core.hashing import DIGEST_SIZE, SALT_SIZE, SCHEME


def require_hashed(info: RegisterInfo) -> None:
    _require("hashing scheme", info.hashed_scheme, SCHEME)
    _require("digest size", info.digest_size, DIGEST_SIZE)
    _require("salt size", len(info.salt), SALT_SIZE)


def require_private(info: RegisterInfo) -> None:
    from ndop_core.crypto import oprf  # libsodium: hashed mode never loads it

    _require("OPRF suite", info.oprf_suite, oprf.SUITE_NAME)
    _require("element size", info.element_size, oprf.ELEMENT_SIZE)
    _require("filter scheme", info.filter_scheme, published_filter.SCHEME)


def require_filter_scheme(scheme: str) -> None:
    _require("filter scheme", scheme, published_filter.SCHEME)


def _require(what: str, offered: str | int, implemented: str | int) -> None:
    if offered != implemented:
        raise UnsupportedServer(
            f"the server uses {what} {offered!r} but this client implements {implemented!r}; "
            "upgrade the client or ask the register operator"
        )
