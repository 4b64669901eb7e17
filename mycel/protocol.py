"""The cache operation codec: compact binary requests and responses between nodes.

Sans-I/O: plain objects to ``bytes`` and back; values travel already serialized.
Decoding never trusts its input: anything malformed, truncated, oversized or
followed by trailing bytes raises :class:`~mycel.errors.ProtocolError`, and no
declared count is believed beyond what the remaining bytes could hold.

Wire format (integers big-endian)::

    request     = u8 version (PROTOCOL_VERSION), u8 op, body
    response    = u8 version, u8 status (0 ok: body of the request's op | 1 error: error body)

    GET         = str16 bucket, u32 count, str16 key * count
    APPLY       = u32 count, record * count
    ADD         = str16 bucket, str16 key, u32 length, data, opt_f64 ttl
    INCR        = str16 bucket, str16 key, i64 delta
    SET_TTL     = str16 bucket, str16 key, opt_f64 ttl
    BUCKETS     = u32 count, spec * count, u8 fresh, clears
    COMPARE_DELETE = str16 bucket, str16 key, u32 length, data expected
    SCAN        = str16 bucket, (u8 0 | u8 1 str16 pattern), u64 cursor (0: start), u32 count
    STATS       = (empty)

    GET ok      = u32 count, (u8 0 | u8 1 record) * count
    APPLY ok    = u32 count, u8 (bit 0 applied, bit 1 existed) * count
    ADD ok      = u8 added, (u8 0 | u8 1 version)
    INCR ok     = i64 value, version
    SET_TTL ok  = u8 updated
    BUCKETS ok  = u32 count, spec * count, clears, u64 clock (the responder's latest clock value)
    COMPARE_DELETE ok = u8 deleted
    SCAN ok     = u32 count, str16 key * count, u64 cursor (0: the scan is complete)
    STATS ok    = u32 count, (str16 name, i64 value) * count, u32 count, (str16 bucket, u64 entries) * count
    error       = u8 code, str16 message, str16 bucket, str16 key, u64 size, u64 limit

    record      = str16 bucket, str16 key, opt_data data, version, opt_f64 ttl
    spec        = str16 name, opt_f64 ttl, (u8 0 | u8 1 u64 max_len)
    clears      = u32 count, (str16 bucket, version cleared) * count
    version     = u64 clock, str8 node_id
    str16       = u16 length, UTF-8     str8 = u8 length, UTF-8
    opt_data    = u8 0 (None) | u8 1, u32 length, bytes
    opt_f64     = u8 0 (None) | u8 1, f64 (never NaN)

Every ``ttl`` on the wire is final, in seconds from now: the sender has resolved a bucket's
default. None and +inf both mean "never expires"; ``<= 0`` means "expired already".
A bucket's *clear version* (``clears``) is the version of its last cluster-wide clear: a
receiver drops every entry at or below it and refuses such writes from then on.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

from mycel.errors import (
    BucketConflict,
    BucketNotFound,
    CacheClosed,
    KeyNotFound,
    MycelError,
    NotAnInteger,
    ProtocolError,
    QuorumNotReached,
    ValueTooLarge,
)
from mycel.store import BucketSpec
from mycel.versions import Version

__all__ = [
    "MAX_ERROR_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "AddRequest",
    "AddResponse",
    "ApplyRequest",
    "ApplyResponse",
    "BucketsRequest",
    "BucketsResponse",
    "CompareDeleteRequest",
    "CompareDeleteResponse",
    "ErrorCode",
    "ErrorResponse",
    "GetRequest",
    "GetResponse",
    "IncrRequest",
    "IncrResponse",
    "Op",
    "Record",
    "Request",
    "Response",
    "ScanRequest",
    "ScanResponse",
    "SetTtlRequest",
    "SetTtlResponse",
    "StatsRequest",
    "StatsResponse",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]

PROTOCOL_VERSION = 2  # 2: clear versions in BUCKETS; COMPARE_DELETE, SCAN, STATS
#: Error messages longer than this (UTF-8 bytes) are truncated by the encoder.
MAX_ERROR_MESSAGE_BYTES = 4096

STATUS_OK = 0
STATUS_ERROR = 1

_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_U64_MAX = (1 << 64) - 1

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")
_HEADER = struct.Struct(">BB")
_DATA = struct.Struct(">BI")  # presence flag 1, length
_FLOAT = struct.Struct(">Bd")  # presence flag 1, value
_VERSION = struct.Struct(">QB")  # clock, node id length
_ERROR_TAIL = struct.Struct(">QQ")

_NONE = b"\x00"
_FALSE = b"\x00"
_TRUE = b"\x01"

# Smallest encodings, used to refuse counts the remaining bytes cannot hold.
_MIN_STR16 = 2
_MIN_RECORD = 2 + 2 + 1 + 9 + 1
_MIN_SPEC = 2 + 1 + 1


class Op(enum.IntEnum):
    """The cache operation a request carries."""

    GET = 1
    APPLY = 2
    ADD = 3
    INCR = 4
    SET_TTL = 5
    BUCKETS = 6
    COMPARE_DELETE = 7
    SCAN = 8
    STATS = 9


class ErrorCode(enum.IntEnum):
    """Why a request failed."""

    BUCKET_NOT_FOUND = 1
    KEY_NOT_FOUND = 2
    NOT_INTEGER = 3
    CONFLICT = 4
    BAD_REQUEST = 5
    TOO_LARGE = 6
    INTERNAL = 7  # the handler failed at an unknown point: the operation may have happened
    QUORUM = 8  # size = replicas that acknowledged, limit = replicas needed
    CLOSED = 9  # the responder's cache is closing or closed
    CURSOR_EXPIRED = 10  # a scan cursor the responder no longer knows (restart the scan there)


# --------------------------------------------------------------------- messages


@dataclass(slots=True)
class Record:
    """One versioned key: ``data`` None is a tombstone; ``ttl`` is remaining seconds, None = never."""

    bucket: str
    key: str
    data: bytes | None
    version: Version
    ttl: float | None


@dataclass(slots=True)
class GetRequest:
    """Read ``keys`` of ``bucket``."""

    op: ClassVar[Op] = Op.GET
    bucket: str
    keys: list[str]


@dataclass(slots=True)
class ApplyRequest:
    """Apply versioned writes (newer wins); records may span buckets."""

    op: ClassVar[Op] = Op.APPLY
    records: list[Record]


@dataclass(slots=True)
class AddRequest:
    """Store ``data`` only if ``key`` has no live value (the receiver assigns the version)."""

    op: ClassVar[Op] = Op.ADD
    bucket: str
    key: str
    data: bytes
    ttl: float | None


@dataclass(slots=True)
class IncrRequest:
    """Add ``delta`` (signed 64-bit) to an integer value."""

    op: ClassVar[Op] = Op.INCR
    bucket: str
    key: str
    delta: int


@dataclass(slots=True)
class SetTtlRequest:
    """Change a live value's expiry (None = never, <= 0 = expire now)."""

    op: ClassVar[Op] = Op.SET_TTL
    bucket: str
    key: str
    ttl: float | None


@dataclass(slots=True)
class BucketsRequest:
    """Create these buckets (or confirm they exist with the same settings).

    ``fresh``: the sender's cache has just started and holds nothing yet; a member
    that already counts it among the key holders hands it its share of the keys.
    """

    op: ClassVar[Op] = Op.BUCKETS
    specs: list[BucketSpec]
    fresh: bool = False
    cleared: dict[str, Version] = field(default_factory=dict)  # bucket -> its clear version


@dataclass(slots=True)
class CompareDeleteRequest:
    """Delete ``key`` only if its value equals ``expected`` (serialized), decided on the primary."""

    op: ClassVar[Op] = Op.COMPARE_DELETE
    bucket: str
    key: str
    expected: bytes


@dataclass(slots=True)
class ScanRequest:
    """The next page of live keys matching ``pattern`` (a glob; None: all); ``cursor`` 0 starts."""

    op: ClassVar[Op] = Op.SCAN
    bucket: str
    pattern: str | None
    cursor: int
    count: int


@dataclass(slots=True)
class StatsRequest:
    """The responder's cache figures."""

    op: ClassVar[Op] = Op.STATS


@dataclass(slots=True)
class GetResponse:
    """One record per requested key, in order; None = not found."""

    op: ClassVar[Op] = Op.GET
    records: list[Record | None]


@dataclass(slots=True)
class ApplyResponse:
    """``(applied, existed)`` per record of the request."""

    op: ClassVar[Op] = Op.APPLY
    results: list[tuple[bool, bool]]


@dataclass(slots=True)
class AddResponse:
    """Whether the value was added, and the version it was written at."""

    op: ClassVar[Op] = Op.ADD
    added: bool
    version: Version | None


@dataclass(slots=True)
class IncrResponse:
    """The new value (signed 64-bit) and the version it was written at."""

    op: ClassVar[Op] = Op.INCR
    value: int
    version: Version


@dataclass(slots=True)
class SetTtlResponse:
    """False if there was no live value to update."""

    op: ClassVar[Op] = Op.SET_TTL
    updated: bool


@dataclass(slots=True)
class BucketsResponse:
    """The responder's buckets."""

    op: ClassVar[Op] = Op.BUCKETS
    specs: list[BucketSpec]
    cleared: dict[str, Version] = field(default_factory=dict)
    clock: int = 0  # the responder's latest clock value


@dataclass(slots=True)
class CompareDeleteResponse:
    """True if the value matched and was deleted."""

    op: ClassVar[Op] = Op.COMPARE_DELETE
    deleted: bool


@dataclass(slots=True)
class ScanResponse:
    """A page of keys and the cursor of the next one (0: no more)."""

    op: ClassVar[Op] = Op.SCAN
    keys: list[str]
    cursor: int


@dataclass(slots=True)
class StatsResponse:
    """Flat integer figures, and live entries per bucket."""

    op: ClassVar[Op] = Op.STATS
    counters: dict[str, int]
    entries: dict[str, int]


@dataclass(slots=True)
class ErrorResponse:
    """A failed request; ``bucket``, ``key``, ``size`` and ``limit`` detail it where they apply."""

    code: ErrorCode
    message: str
    bucket: str = ""
    key: str = ""
    size: int = 0
    limit: int = 0

    def to_exception(self) -> MycelError:
        """The exception this error stands for."""
        code, message = self.code, self.message
        if code == ErrorCode.BUCKET_NOT_FOUND:
            return BucketNotFound(self.bucket, message)
        if code == ErrorCode.KEY_NOT_FOUND:
            return KeyNotFound(self.bucket, self.key, message)
        if code == ErrorCode.NOT_INTEGER:
            return NotAnInteger(message)
        if code == ErrorCode.CONFLICT:
            return BucketConflict(message)
        if code == ErrorCode.TOO_LARGE:
            return ValueTooLarge(self.size, self.limit, message)
        if code == ErrorCode.QUORUM:
            return QuorumNotReached(self.size, self.limit, self.limit, message,
                                    failed_keys=[self.key] if self.key else [], maybe_applied=True)
        if code == ErrorCode.CLOSED:
            return CacheClosed(message)
        error = MycelError(message)
        error.maybe_applied = code == ErrorCode.INTERNAL
        return error

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorResponse:
        """The error response that reports ``exc`` (anything unexpected is INTERNAL)."""
        message = str(exc) or type(exc).__name__
        if isinstance(exc, BucketNotFound):
            return cls(ErrorCode.BUCKET_NOT_FOUND, message, bucket=str(exc.bucket))
        if isinstance(exc, KeyNotFound):
            return cls(ErrorCode.KEY_NOT_FOUND, message, bucket=str(exc.bucket), key=str(exc.key))
        if isinstance(exc, NotAnInteger):
            return cls(ErrorCode.NOT_INTEGER, message)
        if isinstance(exc, BucketConflict):
            return cls(ErrorCode.CONFLICT, message)
        if isinstance(exc, ValueTooLarge):
            return cls(ErrorCode.TOO_LARGE, message, size=exc.size, limit=exc.limit)
        if isinstance(exc, QuorumNotReached):
            key = exc.failed_keys[0] if len(exc.failed_keys) == 1 else ""
            return cls(ErrorCode.QUORUM, message, key=key, size=exc.acked, limit=exc.needed)
        if isinstance(exc, CacheClosed):
            return cls(ErrorCode.CLOSED, message)
        if isinstance(exc, ValueError):  # ProtocolError, invalid bucket settings, bad ttl...
            return cls(ErrorCode.BAD_REQUEST, message)
        return cls(ErrorCode.INTERNAL, f"{type(exc).__name__}: {message}")


Request = Union[
    GetRequest,
    ApplyRequest,
    AddRequest,
    IncrRequest,
    SetTtlRequest,
    BucketsRequest,
    CompareDeleteRequest,
    ScanRequest,
    StatsRequest,
]
Response = Union[
    GetResponse,
    ApplyResponse,
    AddResponse,
    IncrResponse,
    SetTtlResponse,
    BucketsResponse,
    CompareDeleteResponse,
    ScanResponse,
    StatsResponse,
    ErrorResponse,
]


# --------------------------------------------------------------------- encoding


def _str16(out: list[bytes], what: str, value: str) -> None:
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError(f"{what} is {len(raw)} UTF-8 bytes, more than 65535")
    out.append(_U16.pack(len(raw)))
    out.append(raw)


def _ttl(out: list[bytes], ttl: float | None) -> None:
    if ttl is None:
        out.append(_NONE)
    elif ttl != ttl:
        raise ValueError("ttl must be a number of seconds or None, not NaN")
    else:
        out.append(_FLOAT.pack(1, ttl))


def _version(out: list[bytes], version: Version) -> None:
    clock, node = version
    raw = node.encode("utf-8")
    if len(raw) > 0xFF:
        raise ValueError(f"node id in a version is {len(raw)} UTF-8 bytes, more than 255")
    out.append(_VERSION.pack(clock, len(raw)))
    out.append(raw)


def _records(out: list[bytes], records: list[Record | None], optional: bool) -> None:
    """Append ``count`` then every record (each behind a presence byte if ``optional``)."""
    out.append(_U32.pack(len(records)))
    append, extend = out.append, out.extend
    pack16, pack_data, pack_version, pack_float = _U16.pack, _DATA.pack, _VERSION.pack, _FLOAT.pack
    prefixes: dict[str, bytes] = {}  # bucket -> presence byte, u16 length, UTF-8
    lead = _TRUE if optional else b""
    for record in records:
        if record is None:
            if not optional:
                raise TypeError("a record list may not contain None here")
            append(_NONE)
            continue
        bucket = record.bucket
        prefix = prefixes.get(bucket)
        if prefix is None:
            raw = bucket.encode("utf-8")
            if len(raw) > 0xFFFF:
                raise ValueError(f"bucket is {len(raw)} UTF-8 bytes, more than 65535")
            prefix = prefixes[bucket] = lead + pack16(len(raw)) + raw
        key = record.key.encode("utf-8")
        if len(key) > 0xFFFF:
            raise ValueError(f"key is {len(key)} UTF-8 bytes, more than 65535")
        clock, node_id = record.version
        node = node_id.encode("utf-8")
        if len(node) > 0xFF:
            raise ValueError(f"node id in a version is {len(node)} UTF-8 bytes, more than 255")
        data = record.data
        ttl = record.ttl
        if ttl is None:
            tail = _NONE
        elif ttl != ttl:
            raise ValueError("ttl must be a number of seconds or None, not NaN")
        else:
            tail = pack_float(1, ttl)
        extend(
            (
                prefix,
                pack16(len(key)),
                key,
                _NONE if data is None else pack_data(1, len(data)),
                b"" if data is None else data,
                pack_version(clock, len(node)),
                node,
                tail,
            )
        )


def _spec(out: list[bytes], spec: BucketSpec) -> None:
    name, ttl, max_len = spec
    _str16(out, "bucket name", name)
    _ttl(out, ttl)
    if max_len is None:
        out.append(_NONE)
    else:
        out.append(_TRUE)
        out.append(_U64.pack(max_len))


def _count(out: list[bytes], items: list[Any]) -> None:
    out.append(_U32.pack(len(items)))


def _i64(what: str, value: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not _I64_MIN <= value <= _I64_MAX:
        raise ValueError(f"{what} {value} does not fit in a signed 64-bit integer")
    return _I64.pack(value)


def _enc_get_request(out: list[bytes], req: GetRequest) -> None:
    _str16(out, "bucket", req.bucket)
    _count(out, req.keys)
    pack16 = _U16.pack
    append = out.append
    for key in req.keys:
        raw = key.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise ValueError(f"key is {len(raw)} UTF-8 bytes, more than 65535")
        append(pack16(len(raw)))
        append(raw)


def _enc_apply_request(out: list[bytes], req: ApplyRequest) -> None:
    _records(out, req.records, optional=False)  # type: ignore[arg-type]


def _enc_add_request(out: list[bytes], req: AddRequest) -> None:
    _str16(out, "bucket", req.bucket)
    _str16(out, "key", req.key)
    out.append(_U32.pack(len(req.data)))
    out.append(req.data)
    _ttl(out, req.ttl)


def _enc_incr_request(out: list[bytes], req: IncrRequest) -> None:
    _str16(out, "bucket", req.bucket)
    _str16(out, "key", req.key)
    out.append(_i64("delta", req.delta))


def _enc_set_ttl_request(out: list[bytes], req: SetTtlRequest) -> None:
    _str16(out, "bucket", req.bucket)
    _str16(out, "key", req.key)
    _ttl(out, req.ttl)


def _enc_specs(out: list[bytes], msg: BucketsRequest | BucketsResponse) -> None:
    _count(out, msg.specs)
    for spec in msg.specs:
        _spec(out, spec)


def _enc_clears(out: list[bytes], cleared: dict[str, Version]) -> None:
    out.append(_U32.pack(len(cleared)))
    for bucket, version in cleared.items():
        _str16(out, "bucket", bucket)
        _version(out, version)


def _enc_buckets_request(out: list[bytes], req: BucketsRequest) -> None:
    _enc_specs(out, req)
    out.append(_TRUE if req.fresh else _FALSE)
    _enc_clears(out, req.cleared)


def _enc_compare_delete_request(out: list[bytes], req: CompareDeleteRequest) -> None:
    _str16(out, "bucket", req.bucket)
    _str16(out, "key", req.key)
    out.append(_U32.pack(len(req.expected)))
    out.append(req.expected)


def _enc_scan_request(out: list[bytes], req: ScanRequest) -> None:
    _str16(out, "bucket", req.bucket)
    if req.pattern is None:
        out.append(_NONE)
    else:
        out.append(_TRUE)
        _str16(out, "pattern", req.pattern)
    out.append(_U64.pack(req.cursor))
    out.append(_U32.pack(req.count))


def _enc_stats_request(out: list[bytes], req: StatsRequest) -> None:
    pass


def _enc_get_response(out: list[bytes], resp: GetResponse) -> None:
    _records(out, resp.records, optional=True)


def _enc_apply_response(out: list[bytes], resp: ApplyResponse) -> None:
    _count(out, resp.results)
    out.append(bytes([(1 if a else 0) | (2 if e else 0) for a, e in resp.results]))


def _enc_add_response(out: list[bytes], resp: AddResponse) -> None:
    out.append(_TRUE if resp.added else _FALSE)
    if resp.version is None:
        out.append(_NONE)
    else:
        out.append(_TRUE)
        _version(out, resp.version)


def _enc_incr_response(out: list[bytes], resp: IncrResponse) -> None:
    out.append(_i64("incr result", resp.value))
    _version(out, resp.version)


def _enc_set_ttl_response(out: list[bytes], resp: SetTtlResponse) -> None:
    out.append(_TRUE if resp.updated else _FALSE)


def _enc_buckets_response(out: list[bytes], resp: BucketsResponse) -> None:
    _enc_specs(out, resp)
    _enc_clears(out, resp.cleared)
    out.append(_U64.pack(resp.clock))


def _enc_compare_delete_response(out: list[bytes], resp: CompareDeleteResponse) -> None:
    out.append(_TRUE if resp.deleted else _FALSE)


def _enc_scan_response(out: list[bytes], resp: ScanResponse) -> None:
    _count(out, resp.keys)
    for key in resp.keys:
        _str16(out, "key", key)
    out.append(_U64.pack(resp.cursor))


def _enc_stats_response(out: list[bytes], resp: StatsResponse) -> None:
    out.append(_U32.pack(len(resp.counters)))
    for name, value in resp.counters.items():
        _str16(out, "figure name", name)
        out.append(_i64(f"figure {name!r}", value))
    out.append(_U32.pack(len(resp.entries)))
    for bucket, entries in resp.entries.items():
        _str16(out, "bucket", bucket)
        out.append(_U64.pack(entries))


def _enc_error(out: list[bytes], resp: ErrorResponse) -> None:
    raw = resp.message.encode("utf-8", "replace")
    if len(raw) > MAX_ERROR_MESSAGE_BYTES:
        # Cutting may split a multi-byte character: drop its incomplete head.
        raw = raw[:MAX_ERROR_MESSAGE_BYTES].decode("utf-8", "ignore").encode("utf-8")
    out.append(_U8.pack(int(resp.code)))
    out.append(_U16.pack(len(raw)))
    out.append(raw)
    _str16(out, "bucket", resp.bucket)
    _str16(out, "key", resp.key)
    clamp = lambda n: min(max(int(n), 0), _U64_MAX)  # noqa: E731
    out.append(_ERROR_TAIL.pack(clamp(resp.size), clamp(resp.limit)))


_Encoder = Callable[[list[bytes], Any], None]

_REQUEST_ENCODERS: dict[type, tuple[bytes, _Encoder]] = {
    GetRequest: (_HEADER.pack(PROTOCOL_VERSION, Op.GET), _enc_get_request),
    ApplyRequest: (_HEADER.pack(PROTOCOL_VERSION, Op.APPLY), _enc_apply_request),
    AddRequest: (_HEADER.pack(PROTOCOL_VERSION, Op.ADD), _enc_add_request),
    IncrRequest: (_HEADER.pack(PROTOCOL_VERSION, Op.INCR), _enc_incr_request),
    SetTtlRequest: (_HEADER.pack(PROTOCOL_VERSION, Op.SET_TTL), _enc_set_ttl_request),
    BucketsRequest: (_HEADER.pack(PROTOCOL_VERSION, Op.BUCKETS), _enc_buckets_request),
    CompareDeleteRequest: (_HEADER.pack(PROTOCOL_VERSION, Op.COMPARE_DELETE), _enc_compare_delete_request),
    ScanRequest: (_HEADER.pack(PROTOCOL_VERSION, Op.SCAN), _enc_scan_request),
    StatsRequest: (_HEADER.pack(PROTOCOL_VERSION, Op.STATS), _enc_stats_request),
}

_OK = _HEADER.pack(PROTOCOL_VERSION, STATUS_OK)
_ERR = _HEADER.pack(PROTOCOL_VERSION, STATUS_ERROR)

_RESPONSE_ENCODERS: dict[type, tuple[bytes, _Encoder]] = {
    GetResponse: (_OK, _enc_get_response),
    ApplyResponse: (_OK, _enc_apply_response),
    AddResponse: (_OK, _enc_add_response),
    IncrResponse: (_OK, _enc_incr_response),
    SetTtlResponse: (_OK, _enc_set_ttl_response),
    BucketsResponse: (_OK, _enc_buckets_response),
    CompareDeleteResponse: (_OK, _enc_compare_delete_response),
    ScanResponse: (_OK, _enc_scan_response),
    StatsResponse: (_OK, _enc_stats_response),
    ErrorResponse: (_ERR, _enc_error),
}


def _encode(table: dict[type, tuple[bytes, _Encoder]], kind: str, msg: object) -> bytes:
    try:
        header, encoder = table[type(msg)]
    except KeyError:
        raise TypeError(f"not a mycel {kind}: {type(msg).__name__}") from None
    out = [header]
    try:
        encoder(out, msg)
    except struct.error as exc:
        raise ValueError(f"cannot encode {type(msg).__name__}: {exc}") from None
    return b"".join(out)


def encode_request(req: Request) -> bytes:
    """The wire form of a request. ValueError/TypeError if a field cannot be encoded."""
    return _encode(_REQUEST_ENCODERS, "request", req)


def encode_response(resp: Response) -> bytes:
    """The wire form of a response (or an :class:`ErrorResponse`)."""
    return _encode(_RESPONSE_ENCODERS, "response", resp)


# --------------------------------------------------------------------- decoding
#
# Decoders take (buf, p) and return (value, new p); buf is the whole message as
# bytes, so a slice past its end is caught by comparing against len(buf), and a
# fixed-size read past its end raises struct.error or IndexError, turned into
# ProtocolError by _decode().

_unpack16 = _U16.unpack_from
_unpack32 = _U32.unpack_from
_unpack64 = _U64.unpack_from
_unpack_i64 = _I64.unpack_from
_unpack_f64 = _F64.unpack_from
_unpack_version = _VERSION.unpack_from


def _truncated(what: str) -> ProtocolError:
    return ProtocolError(f"truncated message: {what} runs past the end")


def _read_str16(buf: bytes, p: int, what: str) -> tuple[str, int]:
    (n,) = _unpack16(buf, p)
    p += 2
    q = p + n
    if q > len(buf):
        raise _truncated(what)
    return buf[p:q].decode("utf-8"), q


def _read_flag(buf: bytes, p: int, what: str) -> bool:
    flag = buf[p]
    if flag > 1:
        raise ProtocolError(f"{what} flag is {flag}, not 0 or 1")
    return flag == 1


def _read_ttl(buf: bytes, p: int) -> tuple[float | None, int]:
    if not _read_flag(buf, p, "ttl"):
        return None, p + 1
    (ttl,) = _unpack_f64(buf, p + 1)
    if ttl != ttl:
        raise ProtocolError("ttl is NaN")
    return ttl, p + 9


def _read_version(buf: bytes, p: int) -> tuple[Version, int]:
    clock, n = _unpack_version(buf, p)
    p += 9
    q = p + n
    if q > len(buf):
        raise _truncated("version node id")
    return (clock, buf[p:q].decode("utf-8")), q


def _read_count(buf: bytes, p: int, min_size: int, what: str) -> tuple[int, int]:
    (count,) = _unpack32(buf, p)
    p += 4
    if count * min_size > len(buf) - p:
        raise ProtocolError(f"{count} {what} declared, but only {len(buf) - p} bytes remain")
    return count, p


def _read_record(buf: bytes, p: int) -> tuple[Record, int]:
    end = len(buf)
    (n,) = _unpack16(buf, p)
    p += 2
    q = p + n
    if q > end:
        raise _truncated("record bucket")
    bucket = buf[p:q].decode("utf-8")
    (n,) = _unpack16(buf, q)
    p = q + 2
    q = p + n
    if q > end:
        raise _truncated("record key")
    key = buf[p:q].decode("utf-8")
    flag = buf[q]
    if flag == 0:
        data = None
        p = q + 1
    elif flag == 1:
        (n,) = _unpack32(buf, q + 1)
        p = q + 5
        q = p + n
        if q > end:
            raise _truncated("record data")
        data = buf[p:q]
        p = q
    else:
        raise ProtocolError(f"data flag is {flag}, not 0 or 1")
    clock, n = _unpack_version(buf, p)
    p += 9
    q = p + n
    if q > end:
        raise _truncated("version node id")
    version = (clock, buf[p:q].decode("utf-8"))
    flag = buf[q]
    if flag == 0:
        ttl = None
        p = q + 1
    elif flag == 1:
        (ttl,) = _unpack_f64(buf, q + 1)
        if ttl != ttl:
            raise ProtocolError("ttl is NaN")
        p = q + 9
    else:
        raise ProtocolError(f"ttl flag is {flag}, not 0 or 1")
    return Record(bucket, key, data, version, ttl), p


def _read_specs(buf: bytes, p: int) -> tuple[list[BucketSpec], int]:
    count, p = _read_count(buf, p, _MIN_SPEC, "bucket specs")
    specs = []
    for _ in range(count):
        name, p = _read_str16(buf, p, "bucket name")
        ttl, p = _read_ttl(buf, p)
        max_len: int | None = None
        if _read_flag(buf, p, "max_len"):
            (max_len,) = _unpack64(buf, p + 1)
            p += 9
        else:
            p += 1
        specs.append(BucketSpec(name, ttl, max_len))
    return specs, p


def _dec_get_request(buf: bytes, p: int) -> tuple[GetRequest, int]:
    bucket, p = _read_str16(buf, p, "bucket")
    count, p = _read_count(buf, p, _MIN_STR16, "keys")
    end = len(buf)
    keys: list[str] = []
    append = keys.append
    for _ in range(count):
        (n,) = _unpack16(buf, p)
        p += 2
        q = p + n
        if q > end:
            raise _truncated("key")
        append(buf[p:q].decode("utf-8"))
        p = q
    return GetRequest(bucket, keys), p


def _dec_apply_request(buf: bytes, p: int) -> tuple[ApplyRequest, int]:
    count, p = _read_count(buf, p, _MIN_RECORD, "records")
    records: list[Record] = []
    append = records.append
    for _ in range(count):
        record, p = _read_record(buf, p)
        append(record)
    return ApplyRequest(records), p


def _dec_add_request(buf: bytes, p: int) -> tuple[AddRequest, int]:
    bucket, p = _read_str16(buf, p, "bucket")
    key, p = _read_str16(buf, p, "key")
    (n,) = _unpack32(buf, p)
    p += 4
    q = p + n
    if q > len(buf):
        raise _truncated("data")
    data = buf[p:q]
    ttl, p = _read_ttl(buf, q)
    return AddRequest(bucket, key, data, ttl), p


def _dec_incr_request(buf: bytes, p: int) -> tuple[IncrRequest, int]:
    bucket, p = _read_str16(buf, p, "bucket")
    key, p = _read_str16(buf, p, "key")
    (delta,) = _unpack_i64(buf, p)
    return IncrRequest(bucket, key, delta), p + 8


def _dec_set_ttl_request(buf: bytes, p: int) -> tuple[SetTtlRequest, int]:
    bucket, p = _read_str16(buf, p, "bucket")
    key, p = _read_str16(buf, p, "key")
    ttl, p = _read_ttl(buf, p)
    return SetTtlRequest(bucket, key, ttl), p


def _read_clears(buf: bytes, p: int) -> tuple[dict[str, Version], int]:
    count, p = _read_count(buf, p, _MIN_STR16 + 9, "clear versions")
    cleared: dict[str, Version] = {}
    for _ in range(count):
        bucket, p = _read_str16(buf, p, "bucket")
        cleared[bucket], p = _read_version(buf, p)
    return cleared, p


def _dec_buckets_request(buf: bytes, p: int) -> tuple[BucketsRequest, int]:
    specs, p = _read_specs(buf, p)
    fresh = _read_flag(buf, p, "fresh")
    cleared, p = _read_clears(buf, p + 1)
    return BucketsRequest(specs, fresh, cleared), p


def _dec_compare_delete_request(buf: bytes, p: int) -> tuple[CompareDeleteRequest, int]:
    bucket, p = _read_str16(buf, p, "bucket")
    key, p = _read_str16(buf, p, "key")
    (n,) = _unpack32(buf, p)
    p += 4
    q = p + n
    if q > len(buf):
        raise _truncated("expected value")
    return CompareDeleteRequest(bucket, key, buf[p:q]), q


def _dec_scan_request(buf: bytes, p: int) -> tuple[ScanRequest, int]:
    bucket, p = _read_str16(buf, p, "bucket")
    pattern: str | None = None
    if _read_flag(buf, p, "pattern"):
        pattern, p = _read_str16(buf, p + 1, "pattern")
    else:
        p += 1
    (cursor,) = _unpack64(buf, p)
    (count,) = _unpack32(buf, p + 8)
    return ScanRequest(bucket, pattern, cursor, count), p + 12


def _dec_stats_request(buf: bytes, p: int) -> tuple[StatsRequest, int]:
    return StatsRequest(), p


def _dec_get_response(buf: bytes, p: int) -> tuple[GetResponse, int]:
    count, p = _read_count(buf, p, 1, "records")
    records: list[Record | None] = []
    append = records.append
    for _ in range(count):
        flag = buf[p]
        if flag == 0:
            append(None)
            p += 1
        elif flag == 1:
            record, p = _read_record(buf, p + 1)
            append(record)
        else:
            raise ProtocolError(f"record flag is {flag}, not 0 or 1")
    return GetResponse(records), p


_RESULTS = ((False, False), (True, False), (False, True), (True, True))


def _dec_apply_response(buf: bytes, p: int) -> tuple[ApplyResponse, int]:
    count, p = _read_count(buf, p, 1, "results")
    raw = buf[p : p + count]
    if max(raw, default=0) > 3:
        raise ProtocolError("apply result byte has bits other than applied and existed set")
    results = _RESULTS
    return ApplyResponse([results[b] for b in raw]), p + count


def _dec_add_response(buf: bytes, p: int) -> tuple[AddResponse, int]:
    added = _read_flag(buf, p, "added")
    version: Version | None = None
    if _read_flag(buf, p + 1, "version"):
        version, p = _read_version(buf, p + 2)
    else:
        p += 2
    return AddResponse(added, version), p


def _dec_incr_response(buf: bytes, p: int) -> tuple[IncrResponse, int]:
    (value,) = _unpack_i64(buf, p)
    version, p = _read_version(buf, p + 8)
    return IncrResponse(value, version), p


def _dec_set_ttl_response(buf: bytes, p: int) -> tuple[SetTtlResponse, int]:
    return SetTtlResponse(_read_flag(buf, p, "updated")), p + 1


def _dec_buckets_response(buf: bytes, p: int) -> tuple[BucketsResponse, int]:
    specs, p = _read_specs(buf, p)
    cleared, p = _read_clears(buf, p)
    (clock,) = _unpack64(buf, p)
    return BucketsResponse(specs, cleared, clock), p + 8


def _dec_compare_delete_response(buf: bytes, p: int) -> tuple[CompareDeleteResponse, int]:
    return CompareDeleteResponse(_read_flag(buf, p, "deleted")), p + 1


def _dec_scan_response(buf: bytes, p: int) -> tuple[ScanResponse, int]:
    count, p = _read_count(buf, p, _MIN_STR16, "keys")
    keys = []
    for _ in range(count):
        key, p = _read_str16(buf, p, "key")
        keys.append(key)
    (cursor,) = _unpack64(buf, p)
    return ScanResponse(keys, cursor), p + 8


def _dec_stats_response(buf: bytes, p: int) -> tuple[StatsResponse, int]:
    count, p = _read_count(buf, p, _MIN_STR16 + 8, "figures")
    counters: dict[str, int] = {}
    for _ in range(count):
        name, p = _read_str16(buf, p, "figure name")
        (counters[name],) = _unpack_i64(buf, p)
        p += 8
    count, p = _read_count(buf, p, _MIN_STR16 + 8, "buckets")
    entries: dict[str, int] = {}
    for _ in range(count):
        bucket, p = _read_str16(buf, p, "bucket")
        (entries[bucket],) = _unpack64(buf, p)
        p += 8
    return StatsResponse(counters, entries), p


_ERROR_CODES = {int(code): code for code in ErrorCode}


def _dec_error(buf: bytes, p: int) -> tuple[ErrorResponse, int]:
    code = _ERROR_CODES.get(buf[p])
    if code is None:
        raise ProtocolError(f"unknown error code {buf[p]}")
    message, p = _read_str16(buf, p + 1, "error message")
    bucket, p = _read_str16(buf, p, "error bucket")
    key, p = _read_str16(buf, p, "error key")
    size, limit = _ERROR_TAIL.unpack_from(buf, p)
    return ErrorResponse(code, message, bucket, key, size, limit), p + 16


_Decoder = Callable[[bytes, int], tuple[Any, int]]

_REQUEST_DECODERS: dict[int, _Decoder] = {
    Op.GET: _dec_get_request,
    Op.APPLY: _dec_apply_request,
    Op.ADD: _dec_add_request,
    Op.INCR: _dec_incr_request,
    Op.SET_TTL: _dec_set_ttl_request,
    Op.BUCKETS: _dec_buckets_request,
    Op.COMPARE_DELETE: _dec_compare_delete_request,
    Op.SCAN: _dec_scan_request,
    Op.STATS: _dec_stats_request,
}

_RESPONSE_DECODERS: dict[int, _Decoder] = {
    Op.GET: _dec_get_response,
    Op.APPLY: _dec_apply_response,
    Op.ADD: _dec_add_response,
    Op.INCR: _dec_incr_response,
    Op.SET_TTL: _dec_set_ttl_response,
    Op.BUCKETS: _dec_buckets_response,
    Op.COMPARE_DELETE: _dec_compare_delete_response,
    Op.SCAN: _dec_scan_response,
    Op.STATS: _dec_stats_response,
}


def _decode(decoder: _Decoder, buf: bytes, kind: str) -> Any:
    try:
        msg, p = decoder(buf, 2)
    except ProtocolError:
        raise
    except (struct.error, IndexError, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"malformed {kind}: {exc}") from None
    if p != len(buf):
        raise ProtocolError(f"{len(buf) - p} trailing bytes after the {kind}")
    return msg


def _check_version(buf: bytes) -> None:
    if len(buf) < 2:
        raise ProtocolError(f"message of {len(buf)} bytes is too short for its header")
    if buf[0] != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {buf[0]} (this side speaks {PROTOCOL_VERSION})"
        )


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    return data if type(data) is bytes else bytes(data)


def decode_request(data: bytes) -> Request:
    """The request encoded in ``data``; ProtocolError if it is not a valid one."""
    buf = _as_bytes(data)
    _check_version(buf)
    decoder = _REQUEST_DECODERS.get(buf[1])
    if decoder is None:
        raise ProtocolError(f"unknown op {buf[1]}")
    return _decode(decoder, buf, f"{Op(buf[1]).name} request")  # type: ignore[no-any-return]


def decode_response(op: Op, data: bytes) -> Response:
    """The response to an ``op`` request encoded in ``data`` (maybe an :class:`ErrorResponse`)."""
    decoder = _RESPONSE_DECODERS.get(op)
    if decoder is None:
        raise ProtocolError(f"unknown op {op!r}")
    buf = _as_bytes(data)
    _check_version(buf)
    status = buf[1]
    if status == STATUS_ERROR:
        return _decode(_dec_error, buf, "error response")  # type: ignore[no-any-return]
    if status != STATUS_OK:
        raise ProtocolError(f"unknown response status {status}")
    return _decode(decoder, buf, f"{Op(op).name} response")  # type: ignore[no-any-return]
