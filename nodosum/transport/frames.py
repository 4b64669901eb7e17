"""Sans-I/O frame codec for nodosum's QUIC streams.

No sockets, no asyncio: encoders are plain functions returning ``bytes``, and
:class:`FrameDecoder` turns received bytes (split anywhere) into frame objects.

Wire format (all integers big-endian)::

    frame       = u32 body_length, body            (1 <= body_length <= max_frame_size)
    body        = u8 frame_type, fields

    STREAM_INIT = 1: u8 version (FRAME_VERSION), string node_id, string app_id,
                     string stream_name            (nothing may follow)
    DATA        = 2: payload                       (rest of body, may be empty)
    REQUEST     = 3: u64 correlation_id, payload   (rest of body)
    RESPONSE    = 4: u64 correlation_id, u8 status,
                     status 0 (ok):    payload     (rest of body)
                     status 1 (error): message     (rest of body, UTF-8)

    string      = u16 length, UTF-8 bytes          (1 <= length <= 255)

``max_frame_size`` bounds ``body_length`` (the 4-byte prefix is not counted).
STREAM_INIT is the first frame of a stream and appears once; a decoder built
with ``expect_init=False`` reads a stream that carries no STREAM_INIT at all.
"""

from __future__ import annotations

import enum
import struct
from typing import Any, Union

from nodosum.errors import FrameError

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "MAX_ERROR_MESSAGE_BYTES",
    "MAX_STRING_BYTES",
    "FRAME_VERSION",
    "Data",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "RequestFrame",
    "ResponseFrame",
    "StreamInit",
    "encode_data",
    "encode_error_response_frame",
    "encode_request_frame",
    "encode_response_frame",
    "encode_stream_init",
]

FRAME_VERSION = 1
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
#: Longest node_id / app_id / stream_name, in UTF-8 bytes.
MAX_STRING_BYTES = 255
#: Error messages longer than this (UTF-8 bytes) are truncated by the encoder.
MAX_ERROR_MESSAGE_BYTES = 4096
#: Largest possible STREAM_INIT body: type, version, three strings of 255 bytes.
_MAX_INIT_BODY = 2 + 3 * (2 + MAX_STRING_BYTES)

STATUS_OK = 0
STATUS_ERROR = 1


class FrameType(enum.IntEnum):
    """The u8 frame type that starts every body."""

    STREAM_INIT = 1
    DATA = 2
    REQUEST = 3
    RESPONSE = 4


_T_INIT = 1
_T_DATA = 2
_T_REQUEST = 3
_T_RESPONSE = 4

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U64_U8 = struct.Struct(">QB")
_HDR_DATA = struct.Struct(">IB")  # length, type
_HDR_REQUEST = struct.Struct(">IBQ")  # length, type, correlation id
_HDR_RESPONSE = struct.Struct(">IBQB")  # length, type, correlation id, status
_HDR_INIT = struct.Struct(">IBB")  # length, type, version


# --------------------------------------------------------------------- frames


class StreamInit:
    """STREAM_INIT: opens a stream and names who is talking about what."""

    __slots__ = ("version", "node_id", "app_id", "stream_name")
    __match_args__ = ("version", "node_id", "app_id", "stream_name")

    def __init__(self, version: int, node_id: str, app_id: str, stream_name: str) -> None:
        self.version = version
        self.node_id = node_id
        self.app_id = app_id
        self.stream_name = stream_name

    def _key(self) -> tuple[Any, ...]:
        return (self.version, self.node_id, self.app_id, self.stream_name)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is StreamInit:
            return self._key() == other._key()  # type: ignore[attr-defined]
        return NotImplemented

    def __hash__(self) -> int:
        return hash((StreamInit, self._key()))

    def __repr__(self) -> str:
        return (
            f"StreamInit(version={self.version!r}, node_id={self.node_id!r}, "
            f"app_id={self.app_id!r}, stream_name={self.stream_name!r})"
        )


class Data:
    """DATA: an opaque payload."""

    __slots__ = ("payload",)
    __match_args__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        if other.__class__ is Data:
            return self.payload == other.payload  # type: ignore[attr-defined]
        return NotImplemented

    def __hash__(self) -> int:
        return hash((Data, self.payload))

    def __repr__(self) -> str:
        return f"Data(payload={self.payload!r})"


class RequestFrame:
    """REQUEST: a payload that expects a RESPONSE with the same correlation id."""

    __slots__ = ("correlation_id", "payload")
    __match_args__ = ("correlation_id", "payload")

    def __init__(self, correlation_id: int, payload: bytes) -> None:
        self.correlation_id = correlation_id
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        if other.__class__ is RequestFrame:
            return (
                self.correlation_id == other.correlation_id  # type: ignore[attr-defined]
                and self.payload == other.payload  # type: ignore[attr-defined]
            )
        return NotImplemented

    def __hash__(self) -> int:
        return hash((RequestFrame, self.correlation_id, self.payload))

    def __repr__(self) -> str:
        return f"RequestFrame(correlation_id={self.correlation_id!r}, payload={self.payload!r})"


class ResponseFrame:
    """RESPONSE: exactly one of ``payload`` (success) and ``error`` (failure) is not None."""

    __slots__ = ("correlation_id", "payload", "error")
    __match_args__ = ("correlation_id", "payload", "error")

    def __init__(self, correlation_id: int, payload: bytes | None, error: str | None) -> None:
        self.correlation_id = correlation_id
        self.payload = payload
        self.error = error

    def __eq__(self, other: object) -> bool:
        if other.__class__ is ResponseFrame:
            return (
                self.correlation_id == other.correlation_id  # type: ignore[attr-defined]
                and self.payload == other.payload  # type: ignore[attr-defined]
                and self.error == other.error  # type: ignore[attr-defined]
            )
        return NotImplemented

    def __hash__(self) -> int:
        return hash((ResponseFrame, self.correlation_id, self.payload, self.error))

    def __repr__(self) -> str:
        return (
            f"ResponseFrame(correlation_id={self.correlation_id!r}, "
            f"payload={self.payload!r}, error={self.error!r})"
        )


Frame = Union[StreamInit, Data, RequestFrame, ResponseFrame]


# ------------------------------------------------------------------- encoders


def _oversize(body_len: int, max_frame_size: int) -> FrameError:
    return FrameError(f"frame of {body_len} bytes exceeds max_frame_size {max_frame_size}")


def _bad_id(correlation_id: object) -> FrameError:
    return FrameError(f"correlation id {correlation_id!r} is not an integer in 0..2**64-1")


def _encode_string(name: str, value: str) -> bytes:
    if not isinstance(value, str):
        raise FrameError(f"{name} must be a str, not {type(value).__name__}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FrameError(f"{name} is not encodable as UTF-8: {exc}") from None
    if not raw:
        raise FrameError(f"{name} must not be empty")
    if len(raw) > MAX_STRING_BYTES:
        raise FrameError(f"{name} is {len(raw)} UTF-8 bytes, more than {MAX_STRING_BYTES}")
    return raw


def encode_stream_init(
    node_id: str,
    app_id: str,
    stream_name: str,
    *,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> bytes:
    """Encode a STREAM_INIT frame for :data:`FRAME_VERSION`."""
    node = _encode_string("node_id", node_id)
    app = _encode_string("app_id", app_id)
    name = _encode_string("stream_name", stream_name)
    body_len = 2 + 6 + len(node) + len(app) + len(name)
    if body_len > max_frame_size:
        raise _oversize(body_len, max_frame_size)
    pack16 = _U16.pack
    return b"".join(
        (
            _HDR_INIT.pack(body_len, _T_INIT, FRAME_VERSION),
            pack16(len(node)),
            node,
            pack16(len(app)),
            app,
            pack16(len(name)),
            name,
        )
    )


def encode_data(payload: bytes, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Encode a DATA frame."""
    body_len = 1 + len(payload)
    if body_len > max_frame_size:
        raise _oversize(body_len, max_frame_size)
    return _HDR_DATA.pack(body_len, _T_DATA) + payload


def encode_request_frame(
    correlation_id: int, payload: bytes, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> bytes:
    """Encode a REQUEST frame."""
    body_len = 9 + len(payload)
    if body_len > max_frame_size:
        raise _oversize(body_len, max_frame_size)
    try:
        header = _HDR_REQUEST.pack(body_len, _T_REQUEST, correlation_id)
    except struct.error:
        raise _bad_id(correlation_id) from None
    return header + payload


def encode_response_frame(
    correlation_id: int, payload: bytes, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> bytes:
    """Encode a successful RESPONSE frame (status 0) carrying ``payload``."""
    body_len = 10 + len(payload)
    if body_len > max_frame_size:
        raise _oversize(body_len, max_frame_size)
    try:
        header = _HDR_RESPONSE.pack(body_len, _T_RESPONSE, correlation_id, STATUS_OK)
    except struct.error:
        raise _bad_id(correlation_id) from None
    return header + payload


def encode_error_response_frame(
    correlation_id: int, message: str, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> bytes:
    """Encode a failed RESPONSE frame (status 1) carrying ``message``.

    Messages over :data:`MAX_ERROR_MESSAGE_BYTES` UTF-8 bytes are truncated on a
    character boundary; characters UTF-8 cannot encode (lone surrogates) become ``?``.
    """
    raw = message.encode("utf-8", "replace")
    if len(raw) > MAX_ERROR_MESSAGE_BYTES:
        # Cutting may split a multi-byte character: drop its incomplete head.
        raw = raw[:MAX_ERROR_MESSAGE_BYTES].decode("utf-8", "ignore").encode("utf-8")
    body_len = 10 + len(raw)
    if body_len > max_frame_size:
        raise _oversize(body_len, max_frame_size)
    try:
        header = _HDR_RESPONSE.pack(body_len, _T_RESPONSE, correlation_id, STATUS_ERROR)
    except struct.error:
        raise _bad_id(correlation_id) from None
    return header + raw


# -------------------------------------------------------------------- decoder


def _parse_init(view: Any, start: int, stop: int) -> StreamInit:
    """Parse a STREAM_INIT body ``view[start:stop]`` (``start`` is the type byte)."""
    p = start + 1
    if p >= stop:
        raise FrameError("truncated STREAM_INIT: missing protocol version")
    version = view[p]
    if version != FRAME_VERSION:
        raise FrameError(
            f"unsupported protocol version {version} (this side speaks {FRAME_VERSION})"
        )
    p += 1
    values = []
    for name in ("node_id", "app_id", "stream_name"):
        if stop - p < 2:
            raise FrameError(f"truncated STREAM_INIT: missing length of {name}")
        (n,) = _U16.unpack_from(view, p)
        p += 2
        if n == 0 or n > MAX_STRING_BYTES:
            raise FrameError(f"STREAM_INIT {name} length {n} is not in 1..{MAX_STRING_BYTES}")
        if p + n > stop:
            raise FrameError(f"truncated STREAM_INIT: {name} runs past the end of the frame")
        try:
            values.append(str(view[p : p + n], "utf-8"))
        except UnicodeDecodeError:
            raise FrameError(f"STREAM_INIT {name} is not valid UTF-8") from None
        p += n
    if p != stop:
        raise FrameError(f"{stop - p} trailing bytes after STREAM_INIT stream_name")
    return StreamInit(version, values[0], values[1], values[2])


class FrameDecoder:
    """Incremental decoder: ``feed()`` bytes as they arrive, get complete frames back.

    Any protocol violation raises :class:`FrameError` and fails the decoder for
    good (every later ``feed()`` raises too); frames that preceded the bad one in
    the same ``feed()`` call are discarded with it.
    """

    __slots__ = ("_buf", "_max", "_awaiting_init", "_failed")

    def __init__(
        self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, *, expect_init: bool = True
    ) -> None:
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be at least 1")
        self._buf = bytearray()
        self._max = max_frame_size
        self._awaiting_init = expect_init
        self._failed: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf)

    @property
    def max_frame_size(self) -> int:
        """Largest accepted body length."""
        return self._max

    @property
    def failed(self) -> bool:
        """True once a ``feed()`` call has raised."""
        return self._failed is not None

    def feed(self, data: bytes) -> list[Frame]:
        """Buffer ``data`` and return every frame it completes, in order."""
        if self._failed is not None:
            raise FrameError(f"decoder already failed: {self._failed}")
        buf = self._buf
        if not buf and data.__class__ is bytes:
            # Fast path: nothing pending, parse straight out of the caller's bytes.
            src: Any = data
            view: Any = data
        else:
            buf += data
            src = buf
            view = None  # memoryview(buf), made once a frame is complete
        end = len(src)
        pos = 0
        frames: list[Frame] = []
        try:
            if end >= 4:
                append = frames.append
                unpack_u32 = _U32.unpack_from
                unpack_u64 = _U64.unpack_from
                awaiting = self._awaiting_init
                limit = _MAX_INIT_BODY if awaiting and self._max > _MAX_INIT_BODY else self._max
                while end - pos >= 4:
                    (body_len,) = unpack_u32(src, pos)
                    if body_len > limit or body_len == 0:
                        self._bad_length(body_len, awaiting)
                    start = pos + 4
                    stop = start + body_len
                    if stop > end:
                        break
                    if view is None:
                        view = memoryview(buf)
                    ftype = src[start]
                    if awaiting:
                        if ftype != _T_INIT:
                            raise FrameError(
                                f"first frame must be STREAM_INIT, got frame type {ftype}"
                            )
                        append(_parse_init(view, start, stop))
                        awaiting = self._awaiting_init = False
                        limit = self._max
                    elif ftype == _T_REQUEST:
                        if body_len < 9:
                            raise FrameError(f"truncated REQUEST: body of {body_len} bytes")
                        payload = view[start + 9 : stop]
                        if src is not data:
                            payload = bytes(payload)
                        append(RequestFrame(unpack_u64(src, start + 1)[0], payload))
                    elif ftype == _T_RESPONSE:
                        if body_len < 10:
                            raise FrameError(f"truncated RESPONSE: body of {body_len} bytes")
                        cid, status = _U64_U8.unpack_from(src, start + 1)
                        if status == STATUS_OK:
                            payload = view[start + 10 : stop]
                            if src is not data:
                                payload = bytes(payload)
                            append(ResponseFrame(cid, payload, None))
                        elif status == STATUS_ERROR:
                            try:
                                message = str(view[start + 10 : stop], "utf-8")
                            except UnicodeDecodeError:
                                raise FrameError(
                                    "RESPONSE error message is not valid UTF-8"
                                ) from None
                            append(ResponseFrame(cid, None, message))
                        else:
                            raise FrameError(f"RESPONSE status {status} is neither 0 nor 1")
                    elif ftype == _T_DATA:
                        payload = view[start + 1 : stop]
                        if src is not data:
                            payload = bytes(payload)
                        append(Data(payload))
                    elif ftype == _T_INIT:
                        raise FrameError(
                            "unexpected STREAM_INIT: only the first frame of a stream may be one"
                        )
                    else:
                        raise FrameError(f"unknown frame type {ftype}")
                    pos = stop
        except FrameError as exc:
            if view is not None and view is not data:
                view.release()
            buf.clear()
            self._failed = str(exc)
            raise
        if src is data:
            if pos < end:
                buf += data[pos:] if pos else data
        else:
            if view is not None:
                view.release()
            if pos:
                del buf[:pos]
        return frames

    def _bad_length(self, body_len: int, awaiting: bool) -> None:
        if body_len == 0:
            raise FrameError("frame with an empty body (length 0)")
        if body_len > self._max:
            raise _oversize(body_len, self._max)
        # awaiting: no valid STREAM_INIT body is this large
        raise FrameError(
            f"first frame of {body_len} bytes is too large to be a STREAM_INIT"
            f" (at most {_MAX_INIT_BODY})"
        )
