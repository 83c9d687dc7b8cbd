"""What the server publishes about its register: version, counts and per-mode parameters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ndop_core.proto import ndop_pb2


@dataclass(frozen=True)
class RegisterInfo:
    register_id: str
    version: int
    published_at: datetime | None
    count: int
    hashed_scheme: str
    salt: bytes
    digest_size: int
    oprf_suite: str
    oprf_key_id: str
    element_size: int
    filter_scheme: str
    filter_size: int
    filter_sha256: bytes
    filter_false_positive_rate: float
    max_batch_items: int

    @classmethod
    def from_proto(cls, message: ndop_pb2.RegisterInfo) -> RegisterInfo:
        version = message.version
        published = (
            version.published_at.ToDatetime().astimezone()
            if version.HasField("published_at")
            else None
        )
        return cls(
            register_id=message.register_id,
            version=version.number,
            published_at=published,
            count=version.count,
            hashed_scheme=message.hashed.scheme,
            salt=message.hashed.salt,
            digest_size=message.hashed.digest_size,
            oprf_suite=message.private_mode.suite,
            oprf_key_id=message.private_mode.key_id,
            element_size=message.private_mode.element_size,
            filter_scheme=message.private_mode.filter_scheme,
            filter_size=message.private_mode.filter_size,
            filter_sha256=message.private_mode.filter_sha256,
            filter_false_positive_rate=message.private_mode.filter_false_positive_rate,
            max_batch_items=message.max_batch_items,
        )
