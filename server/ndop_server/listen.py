"""Listen addresses: parsing `HOST:PORT`, telling loopback from the rest, and explaining why
an address cannot be bound before grpc tries (grpc's own failure names no reason)."""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from typing import Final

from ndop_server.errors import ConfigurationError

MAX_PORT: Final = 65535
_PORT: Final = re.compile(r"[0-9]{1,5}")
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost."})


def parse_listen(text: str) -> tuple[str, int]:
    """(host, port) from `HOST:PORT` or `[IPV6]:PORT`; ConfigurationError otherwise."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise _needs_port(text)
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise _needs_port(text)
        if ":" in host:
            raise ConfigurationError(
                f"listen address {text!r} is ambiguous: write IPv6 addresses in brackets, "
                "as [::1]:PORT"
            )
    if not host:
        raise ConfigurationError(
            f"listen address {text!r} has no host: write HOST:PORT, e.g. 127.0.0.1:8443"
        )
    if not _PORT.fullmatch(port_text) or int(port_text) > MAX_PORT:
        raise ConfigurationError(
            f"listen address {text!r} has no valid port: the port must be 0 to {MAX_PORT}"
        )
    return host, int(port_text)


def format_listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z) and the name localhost."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def bind_problem(host: str, port: int) -> str | None:
    """Why binding host:port would fail, found by binding each of its addresses briefly.

    None when an address could be bound or the host does not resolve (grpc then decides).
    A port in use is reported even if another address of the host is free, as grpc would
    otherwise serve on only some of them.
    """
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return None
    failures: list[OSError] = []
    for family, kind, protocol, _, sockaddr in addresses:
        try:
            with socket.socket(family, kind, protocol) as probe:
                # As grpc does: a port left in TIME_WAIT is free, and [::] covers IPv4 too.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                probe.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "the address is already in use"
            failures.append(exc)
    if failures and len(failures) == len(addresses):
        reason = failures[0].strerror or "it cannot be bound"
        return reason[0].lower() + reason[1:]
    return None


def _needs_port(text: str) -> ConfigurationError:
    return ConfigurationError(
        f"listen address {text!r} needs a port: write HOST:PORT, e.g. 127.0.0.1:8443 or [::1]:8443"
    )
