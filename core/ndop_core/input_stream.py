"""The text of an input, opened once and read as lines, from a file, a pipe or standard input.

- `-` is standard input. Whatever the input is (a regular file, a pipe, a FIFO, `/dev/stdin`,
  a shell's `<(...)`), it is opened exactly once. A second pass (writing the cleared rows)
  seeks back in a regular file and otherwise replays a private copy kept while the first pass
  read: in memory up to SPOOL_MEMORY bytes, then in an unnamed temporary file.
- gzip is recognised by its magic bytes, whatever the name.
- Lines are split at LF only (a CR before it stays in the line) and are at most MAX_LINE_BYTES
  long, so neither /dev/zero nor a file with no line ends can take unbounded memory.
- Encodings: UTF-8 (the default; a leading BOM is dropped), Latin-1 and Windows-1252, all of
  which never use the LF byte inside a character, so splitting bytes at LF is safe.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final

from ndop_core.errors import InputError, UsageError

STDIN: Final = "-"
BLOCK_BYTES: Final = 1 << 20
MAX_LINE_BYTES: Final = 1 << 20
SPOOL_MEMORY: Final = 32 << 20
ENCODINGS: Final = {
    "utf-8": "utf-8",
    "utf8": "utf-8",
    "latin-1": "latin-1",
    "latin1": "latin-1",
    "iso-8859-1": "latin-1",
    "cp1252": "cp1252",
    "windows-1252": "cp1252",
}
_GZIP_MAGIC: Final = b"\x1f\x8b"
_LINE: Final = re.compile(r"[^\n]*\n|[^\n]+\Z")


def encoding_named(name: str) -> str:
    """The codec for an --encoding value; UsageError for one this reader cannot split safely."""
    codec = ENCODINGS.get(name.strip().lower())
    if codec is None:
        raise UsageError(f"--encoding must be utf-8, latin-1 or cp1252, not {name!r}")
    return codec


def describe(path: Path | str) -> str:
    return "standard input" if str(path) == STDIN else f"input file {path}"


class ByteSource:
    """An input opened once; `blocks()` can be read again from the start after a full read."""

    def __init__(self, path: Path | str) -> None:
        self.name = describe(path)
        self._owned = str(path) != STDIN
        self._stream = _open(path, self.name) if self._owned else sys.stdin.buffer
        self._seekable = _is_regular(self._stream)
        self._spool: IO[bytes] | None = None
        self._passes = 0

    @property
    def size(self) -> int | None:
        """Bytes in the input when it is a regular file; None for a pipe or standard input."""
        return os.fstat(self._stream.fileno()).st_size if self._seekable else None

    def blocks(self) -> Iterator[bytes]:
        """Every byte of the input, in blocks; the second and later calls replay it."""
        self._passes += 1
        if self._passes == 1:
            return self._first_pass()
        if self._seekable:
            self._stream.seek(0)
            return self._read(self._stream)
        if self._spool is None:
            raise InputError(f"{self.name} was not read to its end and cannot be read again")
        self._spool.seek(0)
        return self._read(self._spool)

    def close(self) -> None:
        if self._owned:
            self._stream.close()
        if self._spool is not None:
            self._spool.close()

    def _first_pass(self) -> Iterator[bytes]:
        if self._seekable:
            yield from self._read(self._stream)
            return
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
        for block in self._read(self._stream):
            try:
                spool.write(block)
            except OSError as exc:
                spool.close()
                raise InputError(
                    f"cannot keep a copy of {self.name} in the temporary directory "
                    f"({tempfile.gettempdir()}): {exc.strerror}"
                ) from None
            yield block
        self._spool = spool

    def _read(self, stream: IO[bytes]) -> Iterator[bytes]:
        try:
            while block := stream.read(BLOCK_BYTES):
                yield block
        except OSError as exc:
            raise InputError(f"cannot read {self.name}: {exc.strerror}") from None


def _open(path: Path | str, name: str) -> IO[bytes]:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{name} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"input {path} is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror}") from None


def _is_regular(stream: IO[bytes]) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode) and stream.seekable()
    except (OSError, ValueError):
        return False


def decompressed(blocks: Iterator[bytes], name: str) -> Iterator[bytes]:
    """The blocks as they are, or gunzipped (every member) when they start like gzip."""
    first = next(blocks, b"")
    while len(first) < len(_GZIP_MAGIC) and (more := next(blocks, b"")):
        first += more
    if not first.startswith(_GZIP_MAGIC):
        if first:
            yield first
        yield from blocks
        return
    yield from _gunzip(first, blocks, name)


def _gunzip(first: bytes, rest: Iterator[bytes], name: str) -> Iterator[bytes]:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending = first
    try:
        while True:
            while pending:
                # Bounded output per step: a small compressed file may inflate enormously.
                yield inflater.decompress(pending, BLOCK_BYTES)
                pending = inflater.unconsumed_tail
                if inflater.eof:
                    pending = inflater.unused_data.lstrip(b"\0")
                    if not pending:
                        break
                    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            block = next(rest, None)
            if block is None:
                break
            pending = block
    except zlib.error:
        raise InputError(f"{name} looks like gzip but is not a valid gzip file") from None
    if not inflater.eof:
        raise InputError(f"{name} is a truncated gzip file")


def line_blocks(blocks: Iterator[bytes], encoding: str, name: str) -> Iterator[bytes]:
    """The input again in blocks that each end with a whole line (the last may lack its LF),
    a UTF-8 BOM dropped; InputError names the line that is too long."""
    carry = b""
    line_number = 0
    first = True
    for block in blocks:
        data = carry + block if carry else block
        if first and encoding == "utf-8" and data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        first = first and not data
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if len(carry) > MAX_LINE_BYTES:
            long_line = line_number + data.count(b"\n", 0, cut) + 1
            raise InputError(
                f"line {long_line} of {name} is longer than {MAX_LINE_BYTES >> 20} MiB: "
                "this does not look like a cohort file"
            )
        if cut:
            line_number += data.count(b"\n", 0, cut)
            yield data[:cut]
    if carry:
        yield carry


def lines_of(blocks: Iterator[bytes], encoding: str, name: str) -> Iterator[list[str]]:
    """Lines with their LF (the last may have none), a list per block of `line_blocks`;
    InputError names the line that is not in `encoding`."""
    line_number = 0
    for block in blocks:
        lines = _LINE.findall(decode_lines(block, encoding, name, line_number))
        line_number += len(lines)
        yield lines


def decode_lines(data: bytes, encoding: str, name: str, lines_before: int) -> str:
    """`data`, whole lines that follow `lines_before` others, as text; InputError names the
    first line that is not in `encoding`."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = lines_before + data.count(b"\n", 0, exc.start) + 1
        label = {"utf-8": "UTF-8", "latin-1": "Latin-1", "cp1252": "Windows-1252"}[encoding]
        raise InputError(
            f"line {line} of {name} is not {label} text; if the file uses another encoding, "
            "name it with --encoding latin-1 or --encoding cp1252"
        ) from None
