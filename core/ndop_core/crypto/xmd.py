"""expand_message_xmd of RFC 9380 section 5.3.1, on hashlib (hazardous layer)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

__all__ = ["expand_message_xmd", "expander"]

_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
_OVERSIZE_PREFIX = b"H2C-OVERSIZE-DST-"


def expander(dst: bytes, len_in_bytes: int, hash_name: str = "sha512") -> Callable[[bytes], bytes]:
    """Return ``msg -> expand_message_xmd(msg, dst, len_in_bytes, hash_name)``, precomputed.

    Everything that does not depend on ``msg`` (DST_prime, the hash state after Z_pad, the
    length suffix) is computed once, for use in per-element loops.
    """
    if hash_name not in _HASHES:
        raise ValueError(f"unsupported hash {hash_name!r}: expected one of {sorted(_HASHES)}")
    new = _HASHES[hash_name]
    probe = new()
    b_in_bytes, s_in_bytes = probe.digest_size, probe.block_size
    ell = -(-len_in_bytes // b_in_bytes)
    if not 1 <= len_in_bytes <= 65535 or ell > 255:
        raise ValueError(
            f"len_in_bytes must be between 1 and {min(255 * b_in_bytes, 65535)} for {hash_name}"
        )
    if len(dst) > 255:  # RFC 9380 section 5.3.3
        dst = new(_OVERSIZE_PREFIX + dst).digest()
    dst_prime = dst + len(dst).to_bytes(1, "big")
    suffix = len_in_bytes.to_bytes(2, "big") + b"\x00" + dst_prime
    padded = new(bytes(s_in_bytes))  # state after absorbing Z_pad, copied per message
    tails = [i.to_bytes(1, "big") + dst_prime for i in range(1, ell + 1)]
    first_tail = tails[0]

    def expand(msg: bytes) -> bytes:
        h = padded.copy()
        h.update(msg)
        h.update(suffix)
        b_0 = h.digest()
        b_i = new(b_0 + first_tail).digest()
        if ell == 1:
            return b_i[:len_in_bytes]
        out = [b_i]
        b_0_int = int.from_bytes(b_0, "big")
        for tail in tails[1:]:
            mixed = (b_0_int ^ int.from_bytes(b_i, "big")).to_bytes(b_in_bytes, "big")
            b_i = new(mixed + tail).digest()
            out.append(b_i)
        return b"".join(out)[:len_in_bytes]

    return expand


def expand_message_xmd(
    msg: bytes, dst: bytes, len_in_bytes: int, hash_name: str = "sha512"
) -> bytes:
    """Return ``len_in_bytes`` uniform bytes from ``msg`` under domain separation tag ``dst``.

    ``hash_name`` is "sha256" or "sha512". A DST longer than 255 bytes is first hashed as in
    RFC 9380 section 5.3.3. Raises ValueError if ``len_in_bytes`` is out of range.
    """
    return expander(dst, len_in_bytes, hash_name)(msg)
