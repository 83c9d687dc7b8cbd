"""How a store is named on the command line: a SQLite path or a `postgresql://` URL."""

from __future__ import annotations

from pathlib import Path

from ndop_server.database import is_postgres

StoreLocation = Path | str


def store_location(text: str) -> StoreLocation:
    """A URL stays a string (a Path would fold its '//'); anything else is a file path."""
    return text if is_postgres(text) else Path(text)


def printable_location(location: StoreLocation) -> str:
    """The location without a password, for messages."""
    if is_postgres(location):
        from ndop_server.database.postgres import printable

        return printable(str(location))
    return str(location)
