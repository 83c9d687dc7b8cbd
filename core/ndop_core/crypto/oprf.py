"""RFC 9497 OPRF, suite ristretto255-SHA512, base mode (0x00). Hazardous layer.

Group and scalar arithmetic come only from libsodium (through ``rbcl``); hashing from hashlib.
Elements and scalars are 32-byte canonical encodings; batch forms take and return *packed*
elements (their concatenation). Error messages never contain element, scalar or digest bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Callable, Sequence

import rbcl

from ndop_core.crypto.xmd import expander


def _remove_rbcl_copy() -> None:
    """rbcl writes its bundled libsodium (2.8 MB) to a new temporary file at every import and
    never removes it, so every process (each worker too) would leave one behind until the
    temporary directory fills. Once loaded, the file is not needed."""
    path = getattr(sys.modules.get("rbcl._sodium"), "lib_path", None)
    if isinstance(path, str) and os.path.basename(path).startswith("tmp"):
        with contextlib.suppress(OSError):
            os.unlink(path)


_remove_rbcl_copy()

__all__ = [
    "CONTEXT_STRING",
    "ELEMENT_SIZE",
    "OUTPUT_SIZE",
    "SCALAR_SIZE",
    "SUITE_NAME",
    "InvalidElementError",
    "blind",
    "blind_batch",
    "derive_key_pair",
    "evaluate",
    "evaluate_batch",
    "evaluate_input",
    "evaluate_input_batch",
    "finalize",
    "finalize_batch",
    "generate_secret_key",
    "hash_to_group",
    "hash_to_scalar",
    "public_key",
]

CONTEXT_STRING = b"OPRFV1-\x00-ristretto255-SHA512"
SUITE_NAME = "OPRF(ristretto255, SHA-512)"
ELEMENT_SIZE = 32
SCALAR_SIZE = 32
OUTPUT_SIZE = 64

_MAX_INPUT = 0xFFFF  # inputs are length-prefixed with I2OSP(len, 2)
_IDENTITY = bytes(ELEMENT_SIZE)
_ZERO_SCALAR = bytes(SCALAR_SIZE)
_ELEMENT_PREFIX = ELEMENT_SIZE.to_bytes(2, "big")
_FINALIZE = b"Finalize"
_DST_DERIVE = b"DeriveKeyPair" + CONTEXT_STRING

_expand_to_group = expander(b"HashToGroup-" + CONTEXT_STRING, 64, "sha512")
_expand_to_scalar = expander(b"HashToScalar-" + CONTEXT_STRING, 64, "sha512")
_sha512 = hashlib.sha512

_from_hash: Callable[[bytes], bytes] = rbcl.crypto_core_ristretto255_from_hash
_mult: Callable[[bytes, bytes], bytes] = rbcl.crypto_scalarmult_ristretto255
_mult_base: Callable[[bytes], bytes] = rbcl.crypto_scalarmult_ristretto255_base
_reduce: Callable[[bytes], bytes] = rbcl.crypto_core_ristretto255_scalar_reduce
_invert: Callable[[bytes], bytes] = rbcl.crypto_core_ristretto255_scalar_invert
_mul: Callable[[bytes, bytes], bytes] = rbcl.crypto_core_ristretto255_scalar_mul
_random_scalar: Callable[[], bytes] = rbcl.crypto_core_ristretto255_scalar_random


class InvalidElementError(ValueError):
    """An element is not a valid, non-identity ristretto255 encoding (message carries no bytes)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def _where(what: str, index: int | None) -> str:
    return what if index is None else f"{what} {index}"


def _invalid(what: str, index: int | None, problem: str) -> InvalidElementError:
    return InvalidElementError(f"{_where(what, index)} {problem}", index)


def _check_scalar(scalar: bytes, what: str, index: int | None = None) -> None:
    """Raise ValueError unless ``scalar`` is a canonical nonzero 32-byte scalar."""
    if (
        not isinstance(scalar, bytes)
        or len(scalar) != SCALAR_SIZE
        or scalar == _ZERO_SCALAR
        or _reduce(scalar + _ZERO_SCALAR) != scalar
    ):
        raise ValueError(f"{_where(what, index)} is not a canonical nonzero ristretto255 scalar")


def _check_input(data: bytes, index: int | None = None) -> None:
    if len(data) > _MAX_INPUT:
        raise ValueError(f"{_where('input', index)} is longer than {_MAX_INPUT} bytes")


def _rejected(element: bytes, what: str, index: int | None) -> InvalidElementError:
    if element == _IDENTITY:
        return _invalid(what, index, "is the identity element")
    return _invalid(what, index, "is not a valid ristretto255 encoding")


def _mult_element(scalar: bytes, element: bytes, what: str, index: int | None = None) -> bytes:
    """Return ``scalar * element``, rejecting invalid encodings and the identity.

    libsodium rejects the identity result and invalid or non-canonical encodings, except (in
    1.0.18, which rbcl bundles) an encoding with the top bit set: that one is checked here.
    """
    if len(element) != ELEMENT_SIZE:
        raise _invalid(what, index, f"has length {len(element)}, expected {ELEMENT_SIZE}")
    if element[31] & 0x80 or element == _IDENTITY:
        raise _rejected(element, what, index)
    try:
        return _mult(scalar, element)
    except RuntimeError:  # rbcl's mapping of libsodium's -1
        raise _rejected(element, what, index) from None


def _finalize_hash(data: bytes, element: bytes) -> bytes:
    return _sha512(
        len(data).to_bytes(2, "big") + data + _ELEMENT_PREFIX + element + _FINALIZE
    ).digest()


def _hash_to_nonidentity(data: bytes, index: int | None = None) -> bytes:
    element = _from_hash(_expand_to_group(data))
    if element == _IDENTITY:
        raise ValueError(f"{_where('input', index)} hashes to the identity element")
    return element


def hash_to_group(msg: bytes) -> bytes:
    """HashToGroup: hash_to_ristretto255 with expand_message_xmd(SHA-512)."""
    return _from_hash(_expand_to_group(msg))


def hash_to_scalar(msg: bytes, dst: bytes | None = None) -> bytes:
    """HashToScalar: 64 bytes of expand_message_xmd(SHA-512) reduced mod L."""
    expand = _expand_to_scalar if dst is None else expander(dst, 64, "sha512")
    return _reduce(expand(msg))


def derive_key_pair(seed: bytes, info: bytes) -> tuple[bytes, bytes]:
    """DeriveKeyPair (RFC 9497 section 3.2.1): return (skS, pkS)."""
    if len(seed) != SCALAR_SIZE:
        raise ValueError(f"seed must be {SCALAR_SIZE} bytes")
    if len(info) > _MAX_INPUT:
        raise ValueError(f"info is longer than {_MAX_INPUT} bytes")
    derive_input = seed + len(info).to_bytes(2, "big") + info
    for counter in range(256):
        sk = hash_to_scalar(derive_input + counter.to_bytes(1, "big"), _DST_DERIVE)
        if sk != _ZERO_SCALAR:
            return sk, _mult_base(sk)
    raise ValueError("key derivation failed")  # pragma: no cover - probability ~2^-64000


def generate_secret_key() -> bytes:
    """Return a uniformly random nonzero scalar (libsodium never returns zero)."""
    return _random_scalar()


def public_key(sk: bytes) -> bytes:
    """Return ``sk * G``."""
    _check_scalar(sk, "secret key")
    return _mult_base(sk)


def blind(input: bytes, blind: bytes | None = None) -> tuple[bytes, bytes]:
    """Blind (client): return (blind, blinded_element); ``blind`` is random unless given."""
    _check_input(input)
    if blind is None:
        blind = _random_scalar()
    else:
        _check_scalar(blind, "blind")
    return blind, _mult(blind, _hash_to_nonidentity(input))


def evaluate(sk: bytes, blinded_element: bytes) -> bytes:
    """BlindEvaluate (server): return ``sk * blinded_element``."""
    _check_scalar(sk, "secret key")
    return _mult_element(sk, blinded_element, "blinded element")


def finalize(input: bytes, blind: bytes, evaluated_element: bytes) -> bytes:
    """Finalize (client): unblind and hash into the 64-byte OPRF output."""
    _check_input(input)
    _check_scalar(blind, "blind")
    unblinded = _mult_element(_invert(blind), evaluated_element, "evaluated element")
    return _finalize_hash(input, unblinded)


def evaluate_input(sk: bytes, input: bytes) -> bytes:
    """Evaluate (server, no blinding): F_k(input), equal to the client's Finalize output."""
    _check_input(input)
    _check_scalar(sk, "secret key")
    return _finalize_hash(input, _mult(sk, _hash_to_nonidentity(input)))


def _split(packed: bytes, what: str) -> list[bytes]:
    if len(packed) % ELEMENT_SIZE:
        raise ValueError(f"packed {what}s length is not a multiple of {ELEMENT_SIZE}")
    return [packed[i : i + ELEMENT_SIZE] for i in range(0, len(packed), ELEMENT_SIZE)]


def blind_batch(inputs: Sequence[bytes]) -> tuple[list[bytes], bytes]:
    """Blind many inputs with fresh blinds: return (blinds, packed blinded elements)."""
    random_scalar, mult, to_element = _random_scalar, _mult, _hash_to_nonidentity
    max_input = _MAX_INPUT
    blinds: list[bytes] = []
    out: list[bytes] = []
    for index, data in enumerate(inputs):
        if len(data) > max_input:
            _check_input(data, index)
        b = random_scalar()
        blinds.append(b)
        out.append(mult(b, to_element(data, index)))
    return blinds, b"".join(out)


def evaluate_batch(sk: bytes, packed: bytes) -> bytes:
    """BlindEvaluate a packed batch; InvalidElementError names the first bad index."""
    _check_scalar(sk, "secret key")
    mult, identity = _mult, _IDENTITY
    out: list[bytes] = []
    append = out.append
    elements = _split(packed, "blinded element")
    index = 0
    try:
        for index, element in enumerate(elements):
            if element[31] & 0x80 or element == identity:  # see _mult_element
                raise _rejected(element, "blinded element", index)
            append(mult(sk, element))
    except RuntimeError:
        raise _rejected(elements[index], "blinded element", index) from None
    return b"".join(out)


def _invert_all(scalars: Sequence[bytes]) -> list[bytes]:
    """Invert nonzero scalars with Montgomery's trick: one inversion for the whole batch."""
    if not scalars:
        return []
    mul = _mul
    acc = scalars[0]
    prefix = [acc]  # prefix[i] = scalars[0] * ... * scalars[i]
    for s in scalars[1:]:
        acc = mul(acc, s)
        prefix.append(acc)
    inv = _invert(acc)
    inverses = prefix  # overwritten from the end: prefix[i - 1] is read before slot i - 1
    for i in range(len(scalars) - 1, 0, -1):
        inverses[i] = mul(inv, prefix[i - 1])
        inv = mul(inv, scalars[i])
    inverses[0] = inv
    return inverses


def finalize_batch(
    inputs: Sequence[bytes], blinds: Sequence[bytes], packed_evaluated: bytes
) -> list[bytes]:
    """Finalize a batch: one scalar inversion in all (Montgomery's batch-inversion trick)."""
    elements = _split(packed_evaluated, "evaluated element")
    if not len(inputs) == len(blinds) == len(elements):
        raise ValueError("inputs, blinds and evaluated elements differ in number")
    check_scalar, max_input = _check_scalar, _MAX_INPUT
    for index, (data, b) in enumerate(zip(inputs, blinds, strict=True)):
        if len(data) > max_input:
            _check_input(data, index)
        check_scalar(b, "blind", index)
    finalize_hash, mult_element = _finalize_hash, _mult_element
    return [
        finalize_hash(data, mult_element(inv, element, "evaluated element", index))
        for index, (data, inv, element) in enumerate(
            zip(inputs, _invert_all(blinds), elements, strict=True)
        )
    ]


def evaluate_input_batch(sk: bytes, inputs: Sequence[bytes]) -> list[bytes]:
    """Evaluate many inputs directly (server side, no blinding)."""
    _check_scalar(sk, "secret key")
    mult, finalize_hash, to_element = _mult, _finalize_hash, _hash_to_nonidentity
    max_input = _MAX_INPUT
    out: list[bytes] = []
    for index, data in enumerate(inputs):
        if len(data) > max_input:
            _check_input(data, index)
        out.append(finalize_hash(data, mult(sk, to_element(data, index))))
    return out
