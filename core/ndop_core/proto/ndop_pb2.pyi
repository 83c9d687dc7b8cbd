import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetRegisterInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RegisterVersion(_message.Message):
    __slots__ = ("number", "published_at", "count")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    number: int
    published_at: _timestamp_pb2.Timestamp
    count: int
    def __init__(self, number: _Optional[int] = ..., published_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., count: _Optional[int] = ...) -> None: ...

class HashedModeParameters(_message.Message):
    __slots__ = ("scheme", "salt", "digest_size")
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    DIGEST_SIZE_FIELD_NUMBER: _ClassVar[int]
    scheme: str
    salt: bytes
    digest_size: int
    def __init__(self, scheme: _Optional[str] = ..., salt: _Optional[bytes] = ..., digest_size: _Optional[int] = ...) -> None: ...

class PrivateModeParameters(_message.Message):
    __slots__ = ("suite", "key_id", "element_size", "filter_scheme", "filter_size", "filter_sha256", "filter_false_positive_rate")
    SUITE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    FILTER_SCHEME_FIELD_NUMBER: _ClassVar[int]
    FILTER_SIZE_FIELD_NUMBER: _ClassVar[int]
    FILTER_SHA256_FIELD_NUMBER: _ClassVar[int]
    FILTER_FALSE_POSITIVE_RATE_FIELD_NUMBER: _ClassVar[int]
    suite: str
    key_id: str
    element_size: int
    filter_scheme: str
    filter_size: int
    filter_sha256: bytes
    filter_false_positive_rate: float
    def __init__(self, suite: _Optional[str] = ..., key_id: _Optional[str] = ..., element_size: _Optional[int] = ..., filter_scheme: _Optional[str] = ..., filter_size: _Optional[int] = ..., filter_sha256: _Optional[bytes] = ..., filter_false_positive_rate: _Optional[float] = ...) -> None: ...

class RegisterInfo(_message.Message):
    __slots__ = ("register_id", "version", "hashed", "private_mode", "max_batch_items")
    REGISTER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASHED_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_ITEMS_FIELD_NUMBER: _ClassVar[int]
    register_id: str
    version: RegisterVersion
    hashed: HashedModeParameters
    private_mode: PrivateModeParameters
    max_batch_items: int
    def __init__(self, register_id: _Optional[str] = ..., version: _Optional[_Union[RegisterVersion, _Mapping]] = ..., hashed: _Optional[_Union[HashedModeParameters, _Mapping]] = ..., private_mode: _Optional[_Union[PrivateModeParameters, _Mapping]] = ..., max_batch_items: _Optional[int] = ...) -> None: ...

class CheckContext(_message.Message):
    __slots__ = ("purpose", "request_id", "expected_items", "register_version")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    REGISTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    purpose: str
    request_id: str
    expected_items: int
    register_version: int
    def __init__(self, purpose: _Optional[str] = ..., request_id: _Optional[str] = ..., expected_items: _Optional[int] = ..., register_version: _Optional[int] = ...) -> None: ...

class HashedCheckRequest(_message.Message):
    __slots__ = ("context", "batch_id", "digests")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    context: CheckContext
    batch_id: int
    digests: bytes
    def __init__(self, context: _Optional[_Union[CheckContext, _Mapping]] = ..., batch_id: _Optional[int] = ..., digests: _Optional[bytes] = ...) -> None: ...

class MembershipBatch(_message.Message):
    __slots__ = ("batch_id", "register_version", "count", "opted_out")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    OPTED_OUT_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    register_version: int
    count: int
    opted_out: bytes
    def __init__(self, batch_id: _Optional[int] = ..., register_version: _Optional[int] = ..., count: _Optional[int] = ..., opted_out: _Optional[bytes] = ...) -> None: ...

class HashedCheckResponse(_message.Message):
    __slots__ = ("batch", "summary")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    batch: MembershipBatch
    summary: CheckSummary
    def __init__(self, batch: _Optional[_Union[MembershipBatch, _Mapping]] = ..., summary: _Optional[_Union[CheckSummary, _Mapping]] = ...) -> None: ...

class GetFilterRequest(_message.Message):
    __slots__ = ("version", "base_version", "base_sha256")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_SHA256_FIELD_NUMBER: _ClassVar[int]
    version: int
    base_version: int
    base_sha256: bytes
    def __init__(self, version: _Optional[int] = ..., base_version: _Optional[int] = ..., base_sha256: _Optional[bytes] = ...) -> None: ...

class FilterChunk(_message.Message):
    __slots__ = ("header", "offset", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: FilterHeader
    offset: int
    data: bytes
    def __init__(self, header: _Optional[_Union[FilterHeader, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class FilterHeader(_message.Message):
    __slots__ = ("register_version", "count", "key_id", "filter_scheme", "size", "sha256", "false_positive_rate", "delta")
    REGISTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_SCHEME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FALSE_POSITIVE_RATE_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    register_version: int
    count: int
    key_id: str
    filter_scheme: str
    size: int
    sha256: bytes
    false_positive_rate: float
    delta: FilterDelta
    def __init__(self, register_version: _Optional[int] = ..., count: _Optional[int] = ..., key_id: _Optional[str] = ..., filter_scheme: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[bytes] = ..., false_positive_rate: _Optional[float] = ..., delta: _Optional[_Union[FilterDelta, _Mapping]] = ...) -> None: ...

class FilterDelta(_message.Message):
    __slots__ = ("scheme", "base_version", "base_sha256", "size")
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    scheme: str
    base_version: int
    base_sha256: bytes
    size: int
    def __init__(self, scheme: _Optional[str] = ..., base_version: _Optional[int] = ..., base_sha256: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("context", "batch_id", "blinded_elements")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    BLINDED_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    context: CheckContext
    batch_id: int
    blinded_elements: bytes
    def __init__(self, context: _Optional[_Union[CheckContext, _Mapping]] = ..., batch_id: _Optional[int] = ..., blinded_elements: _Optional[bytes] = ...) -> None: ...

class EvaluatedBatch(_message.Message):
    __slots__ = ("batch_id", "register_version", "key_id", "count", "evaluated_elements")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    register_version: int
    key_id: str
    count: int
    evaluated_elements: bytes
    def __init__(self, batch_id: _Optional[int] = ..., register_version: _Optional[int] = ..., key_id: _Optional[str] = ..., count: _Optional[int] = ..., evaluated_elements: _Optional[bytes] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("batch", "summary")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    batch: EvaluatedBatch
    summary: CheckSummary
    def __init__(self, batch: _Optional[_Union[EvaluatedBatch, _Mapping]] = ..., summary: _Optional[_Union[CheckSummary, _Mapping]] = ...) -> None: ...

class CheckSummary(_message.Message):
    __slots__ = ("request_id", "register_version", "items_checked", "items_opted_out", "receipt", "register_count")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    ITEMS_OPTED_OUT_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    REGISTER_COUNT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    register_version: int
    items_checked: int
    items_opted_out: int
    receipt: Receipt
    register_count: int
    def __init__(self, request_id: _Optional[str] = ..., register_version: _Optional[int] = ..., items_checked: _Optional[int] = ..., items_opted_out: _Optional[int] = ..., receipt: _Optional[_Union[Receipt, _Mapping]] = ..., register_count: _Optional[int] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("body", "signature", "signing_key_id")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    signing_key_id: str
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., signing_key_id: _Optional[str] = ...) -> None: ...

class ReceiptBody(_message.Message):
    __slots__ = ("format", "organisation", "request_id", "issued_at", "mode", "purpose", "register_id", "register_version", "register_count", "items_checked", "submitted_sha256")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ORGANISATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    REGISTER_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    REGISTER_COUNT_FIELD_NUMBER: _ClassVar[int]
    ITEMS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_SHA256_FIELD_NUMBER: _ClassVar[int]
    format: str
    organisation: str
    request_id: str
    issued_at: _timestamp_pb2.Timestamp
    mode: str
    purpose: str
    register_id: str
    register_version: int
    register_count: int
    items_checked: int
    submitted_sha256: bytes
    def __init__(self, format: _Optional[str] = ..., organisation: _Optional[str] = ..., request_id: _Optional[str] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., mode: _Optional[str] = ..., purpose: _Optional[str] = ..., register_id: _Optional[str] = ..., register_version: _Optional[int] = ..., register_count: _Optional[int] = ..., items_checked: _Optional[int] = ..., submitted_sha256: _Optional[bytes] = ...) -> None: ...
