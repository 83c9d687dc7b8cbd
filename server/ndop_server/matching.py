"""Answering one batch, for each mode: plain classes the gRPC servicer calls.

Every error raised here is a BatchRejected whose message names the batch and the rule broken,
never the bytes that broke it.
"""

from __future__ import annotations

from typing import Final

from ndop_core.crypto import oprf
from ndop_core.hashing import DIGEST_SIZE
from ndop_core.packing import pack_bits
from ndop_server.register_view import RegisterView
from ndop_server.tokens import Tokenizer, index_keys

MAX_BATCH_ITEMS: Final = 65536


class BatchRejected(ValueError):
    """A batch is malformed; the message is safe to send to the client and to log."""


def batch_items(batch_id: int, payload: bytes, item_size: int, what: str) -> int:
    """How many items a packed batch holds; BatchRejected if it is malformed or too big."""
    if len(payload) % item_size:
        raise BatchRejected(f"batch {batch_id}: {what} must be {item_size} bytes each")
    count = len(payload) // item_size
    if count > MAX_BATCH_ITEMS:
        raise BatchRejected(f"batch {batch_id}: more than {MAX_BATCH_ITEMS} items in one batch")
    return count


class HashedMatcher:
    """Membership of digests in one register view."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer

    def count(self, batch_id: int, digests: bytes) -> int:
        return batch_items(batch_id, digests, DIGEST_SIZE, "digests")

    def answer(self, view: RegisterView, digests: bytes) -> tuple[bytes, int]:
        """(packed membership bits, items opted out) for one well-formed batch of digests."""
        members = view.members(index_keys(self._tokenizer.tokens(digests, DIGEST_SIZE)))
        return pack_bits(members), int(members.sum())


class Evaluator:
    """OPRF evaluation of blinded elements with the register's key."""

    def __init__(self, oprf_key: bytes) -> None:
        self._key = oprf_key

    def count(self, batch_id: int, blinded: bytes) -> int:
        return batch_items(batch_id, blinded, oprf.ELEMENT_SIZE, "blinded elements")

    def answer(self, batch_id: int, blinded: bytes) -> bytes:
        try:
            return oprf.evaluate_batch(self._key, blinded)
        except oprf.InvalidElementError as exc:
            raise BatchRejected(
                f"batch {batch_id}: element {exc.index} is not a valid ristretto255 encoding "
                "(malformed, non-canonical or the identity)"
            ) from None
