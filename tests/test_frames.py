"""Tests of the sans-I/O frame codec (nodosum.transport.frames)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodosum.errors import FrameError
from nodosum.transport.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    MAX_ERROR_MESSAGE_BYTES,
    FRAME_VERSION,
    Data,
    FrameDecoder,
    FrameType,
    RequestFrame,
    ResponseFrame,
    StreamInit,
    encode_data,
    encode_error_response_frame,
    encode_request_frame,
    encode_response_frame,
    encode_stream_init,
)

FAST = settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])

INIT = encode_stream_init("node-a", "cache", "rpc")
INIT_FRAME = StreamInit(FRAME_VERSION, "node-a", "cache", "rpc")

# ------------------------------------------------------------------ strategies

names = st.text(min_size=1, max_size=80).filter(lambda s: len(s.encode("utf-8")) <= 255)
payloads = st.binary(max_size=200)
ids = st.integers(min_value=0, max_value=2**64 - 1)
messages = st.text(max_size=100)


@st.composite
def init_frames(draw: st.DrawFn) -> tuple[bytes, StreamInit]:
    node, app, name = draw(names), draw(names), draw(names)
    return encode_stream_init(node, app, name), StreamInit(FRAME_VERSION, node, app, name)


def _data(p: bytes) -> tuple[bytes, Data]:
    return encode_data(p), Data(p)


def _request(c: int, p: bytes) -> tuple[bytes, RequestFrame]:
    return encode_request_frame(c, p), RequestFrame(c, p)


def _response(c: int, p: bytes) -> tuple[bytes, ResponseFrame]:
    return encode_response_frame(c, p), ResponseFrame(c, p, None)


def _error(c: int, m: str) -> tuple[bytes, ResponseFrame]:
    return encode_error_response_frame(c, m), ResponseFrame(c, None, m)


later_frames = st.one_of(
    st.builds(_data, payloads),
    st.builds(_request, ids, payloads),
    st.builds(_response, ids, payloads),
    st.builds(_error, ids, messages),
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], list[object]]:
    """A valid stream: STREAM_INIT then random frames; (encoded pieces, frames)."""
    pairs = [draw(init_frames())] + draw(st.lists(later_frames, max_size=15))
    return [e for e, _ in pairs], [f for _, f in pairs]


def decode_all(blob: bytes, **kwargs: object) -> list[object]:
    dec = FrameDecoder(**kwargs)  # type: ignore[arg-type]
    frames = dec.feed(blob)
    assert dec.buffered == 0
    return frames


def frame(ftype: int, body: bytes) -> bytes:
    """A raw frame with an arbitrary type byte and body."""
    return struct.pack(">IB", 1 + len(body), ftype) + body


def init_body(*strings: bytes, version: int = FRAME_VERSION) -> bytes:
    return bytes([version]) + b"".join(struct.pack(">H", len(s)) + s for s in strings)


def expect_error(data: bytes, match: str, **kwargs: object) -> FrameDecoder:
    dec = FrameDecoder(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(FrameError, match=match):
        dec.feed(data)
    return dec


# ----------------------------------------------------------------- round trips


def test_frame_type_values() -> None:
    assert [int(t) for t in FrameType] == [1, 2, 3, 4]
    assert DEFAULT_MAX_FRAME_SIZE == 16 * 1024 * 1024
    assert FRAME_VERSION == 1


def test_known_encoding() -> None:
    assert encode_stream_init("n", "ab", "c") == (
        b"\x00\x00\x00\x0c\x01\x01\x00\x01n\x00\x02ab\x00\x01c"
    )
    assert encode_data(b"xy") == b"\x00\x00\x00\x03\x02xy"
    assert encode_request_frame(258, b"p") == b"\x00\x00\x00\x0a\x03" + (258).to_bytes(8, "big") + b"p"
    assert encode_response_frame(1, b"") == b"\x00\x00\x00\x0a\x04" + (1).to_bytes(8, "big") + b"\x00"
    assert encode_error_response_frame(1, "e") == (
        b"\x00\x00\x00\x0b\x04" + (1).to_bytes(8, "big") + b"\x01e"
    )


@FAST
@given(init_frames())
def test_stream_init_round_trip(pair: tuple[bytes, StreamInit]) -> None:
    encoded, expected = pair
    assert decode_all(encoded) == [expected]


@FAST
@given(payloads)
def test_data_round_trip(payload: bytes) -> None:
    assert decode_all(encode_data(payload), expect_init=False) == [Data(payload)]


@FAST
@given(ids, payloads)
def test_request_round_trip(cid: int, payload: bytes) -> None:
    assert decode_all(INIT + encode_request_frame(cid, payload)) == [INIT_FRAME, RequestFrame(cid, payload)]


@FAST
@given(ids, payloads)
def test_response_round_trip(cid: int, payload: bytes) -> None:
    assert decode_all(encode_response_frame(cid, payload), expect_init=False) == [
        ResponseFrame(cid, payload, None)
    ]


@FAST
@given(ids, messages)
def test_error_response_round_trip(cid: int, message: str) -> None:
    assert decode_all(encode_error_response_frame(cid, message), expect_init=False) == [
        ResponseFrame(cid, None, message)
    ]


@FAST
@given(streams(), st.data())
def test_stream_split_anywhere(
    stream: tuple[list[bytes], list[object]], data: st.DataObject
) -> None:
    pieces, expected = stream
    blob = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=12)))
    bounds = [0, *cuts, len(blob)]
    dec = FrameDecoder()
    got: list[object] = []
    for a, b in zip(bounds, bounds[1:]):
        got.extend(dec.feed(blob[a:b]))
    assert got == expected
    assert dec.buffered == 0
    for f in got:
        payload = getattr(f, "payload", None)
        assert payload is None or type(payload) is bytes


@FAST
@given(streams(), st.data())
def test_stream_split_with_buffer_types(
    stream: tuple[list[bytes], list[object]], data: st.DataObject
) -> None:
    """bytearray and memoryview chunks decode like bytes, payloads are still bytes."""
    pieces, expected = stream
    blob = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=6)))
    bounds = [0, *cuts, len(blob)]
    kinds = [bytes, bytearray, lambda b: memoryview(bytearray(b))]
    dec = FrameDecoder()
    got: list[object] = []
    for a, b in zip(bounds, bounds[1:]):
        kind = data.draw(st.sampled_from(kinds))
        got.extend(dec.feed(kind(blob[a:b])))
    assert got == expected
    assert all(type(getattr(f, "payload", b"")) in (bytes, type(None)) for f in got)


@FAST
@given(streams())
def test_every_prefix_yields_only_complete_frames(stream: tuple[list[bytes], list[object]]) -> None:
    pieces, expected = stream
    blob = b"".join(pieces)
    ends = []
    total = 0
    for p in pieces:
        total += len(p)
        ends.append(total)
    for cut in range(len(blob)):
        dec = FrameDecoder()
        got = dec.feed(blob[:cut])
        complete = sum(1 for e in ends if e <= cut)
        assert got == expected[:complete]
        assert dec.buffered == cut - (ends[complete - 1] if complete else 0)


def test_byte_at_a_time_and_buffered() -> None:
    blob = INIT + encode_request_frame(7, b"abc") + encode_data(b"z" * 50)
    dec = FrameDecoder()
    got: list[object] = []
    for i in range(len(blob)):
        got.extend(dec.feed(blob[i : i + 1]))
    assert got == [INIT_FRAME, RequestFrame(7, b"abc"), Data(b"z" * 50)]
    assert dec.buffered == 0
    assert dec.feed(b"") == []
    assert dec.feed(b"\x00\x00") == []
    assert dec.buffered == 2


def test_large_frame_in_many_chunks() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    blob = INIT + encode_data(payload) + encode_request_frame(1, b"tail")
    dec = FrameDecoder()
    got: list[object] = []
    for i in range(0, len(blob), 1000):
        got.extend(dec.feed(blob[i : i + 1000]))
    assert got == [INIT_FRAME, Data(payload), RequestFrame(1, b"tail")]
    assert type(got[1].payload) is bytes  # type: ignore[attr-defined]


def test_frame_equality_and_repr() -> None:
    assert Data(b"x") == Data(b"x")
    assert Data(b"x") != Data(b"y")
    assert RequestFrame(1, b"x") != ResponseFrame(1, b"x", None)
    assert Data(b"x") != (b"x",)
    assert len({RequestFrame(1, b"a"), RequestFrame(1, b"a")}) == 1
    assert "ResponseFrame(correlation_id=3" in repr(ResponseFrame(3, None, "boom"))
    match RequestFrame(5, b"p"):
        case RequestFrame(cid, body):
            assert (cid, body) == (5, b"p")


# ------------------------------------------------------------------------ fuzz


@FUZZ
@given(st.binary(max_size=300), st.booleans(), st.booleans())
def test_fuzz_random_bytes(junk: bytes, with_init: bool, expect_init: bool) -> None:
    blob = (INIT if with_init else b"") + junk
    dec = FrameDecoder(max_frame_size=1024, expect_init=expect_init)
    try:
        frames = dec.feed(blob)
    except FrameError:
        with pytest.raises(FrameError):
            dec.feed(b"")
    else:
        assert isinstance(frames, list)


@FUZZ
@given(streams(), st.data())
def test_fuzz_mutated_stream_split(
    stream: tuple[list[bytes], list[object]], data: st.DataObject
) -> None:
    """Corrupt a valid stream in a few places, feed it in pieces: only FrameError."""
    blob = bytearray(b"".join(stream[0]))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=5)))
    bounds = [0, *cuts, len(blob)]
    dec = FrameDecoder(max_frame_size=4096)
    try:
        for a, b in zip(bounds, bounds[1:]):
            dec.feed(bytes(blob[a:b]))
    except FrameError:
        assert dec.failed
        assert dec.buffered == 0


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 6), st.binary(max_size=40)), max_size=8),
    st.booleans(),
)
def test_fuzz_well_framed_random_bodies(bodies: list[tuple[int, bytes]], with_init: bool) -> None:
    """Correct length prefixes around random type bytes and bodies reach every parser branch."""
    blob = (INIT if with_init else b"") + b"".join(frame(t, b) for t, b in bodies)
    dec = FrameDecoder()
    try:
        frames = dec.feed(blob)
    except FrameError:
        assert dec.failed
    else:
        assert len(frames) == with_init + len(bodies)
        assert dec.buffered == 0


# ---------------------------------------------------------------- error cases


def test_zero_length_body() -> None:
    expect_error(INIT + b"\x00\x00\x00\x00", "empty body")


def test_oversize_length_raises_before_body() -> None:
    dec = FrameDecoder(max_frame_size=100, expect_init=False)
    assert dec.feed(b"\x00\x00") == []
    with pytest.raises(FrameError, match="frame of 101 bytes exceeds max_frame_size 100"):
        dec.feed(b"\x00\x65")  # the header is complete, no body byte has arrived


def test_oversize_after_init() -> None:
    dec = FrameDecoder(max_frame_size=1000)
    assert dec.feed(INIT) == [INIT_FRAME]
    assert dec.feed(encode_data(b"x" * 999)) == [Data(b"x" * 999)]
    with pytest.raises(FrameError, match="exceeds max_frame_size"):
        dec.feed(struct.pack(">I", 1001))


def test_first_frame_too_large_for_stream_init() -> None:
    expect_error(struct.pack(">I", 100_000), "too large to be a STREAM_INIT")


@pytest.mark.parametrize("ftype", [0, 5, 255])
def test_unknown_frame_type(ftype: int) -> None:
    expect_error(INIT + frame(ftype, b"abc"), f"unknown frame type {ftype}")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (frame(3, b""), "truncated REQUEST"),
        (frame(3, b"\x00" * 7), "truncated REQUEST"),
        (frame(4, b"\x00" * 8), "truncated RESPONSE"),
        (frame(4, b""), "truncated RESPONSE"),
    ],
)
def test_truncated_fixed_fields(data: bytes, match: str) -> None:
    expect_error(INIT + data, match)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "missing protocol version"),
        (init_body(), "missing length of node_id"),
        (init_body(b"n", b"a") + b"\x00", "missing length of stream_name"),
        (init_body(b"n") + b"\x00\x05ab", "app_id runs past the end"),
    ],
)
def test_truncated_stream_init(body: bytes, match: str) -> None:
    expect_error(frame(1, body), match)


def test_minimal_request_and_response_bodies() -> None:
    got = decode_all(INIT + frame(3, b"\x00" * 8) + frame(4, b"\x00" * 9))
    assert got == [INIT_FRAME, RequestFrame(0, b""), ResponseFrame(0, b"", None)]


@pytest.mark.parametrize(
    "body",
    [
        init_body(b"\xff", b"a", b"s"),
        init_body(b"n", b"\xc3", b"s"),
        init_body(b"n", b"a", b"\xed\xa0\x80"),  # encoded surrogate
    ],
)
def test_bad_utf8_in_stream_init(body: bytes) -> None:
    expect_error(frame(1, body), "not valid UTF-8")


def test_bad_utf8_in_error_message() -> None:
    expect_error(INIT + frame(4, b"\x00" * 8 + b"\x01" + b"\xfe\xff"), "not valid UTF-8")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (init_body(b"", b"a", b"s"), "node_id length 0"),
        (init_body(b"n", b"", b"s"), "app_id length 0"),
        (init_body(b"n", b"a", b""), "stream_name length 0"),
        (init_body(b"n", b"a" * 256, b"s"), "app_id length 256"),
        (init_body(b"n", b"a", b"s") + b"x", "1 trailing bytes"),
    ],
)
def test_bad_string_lengths(body: bytes, match: str) -> None:
    expect_error(frame(1, body), match)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unsupported_version(version: int) -> None:
    expect_error(frame(1, init_body(b"n", b"a", b"s", version=version)), "unsupported protocol")


@pytest.mark.parametrize(
    "first", [encode_data(b"x"), encode_request_frame(1, b""), encode_response_frame(1, b"")]
)
def test_first_frame_must_be_stream_init(first: bytes) -> None:
    expect_error(first + INIT, "first frame must be STREAM_INIT")


def test_second_stream_init() -> None:
    dec = FrameDecoder()
    assert dec.feed(INIT) == [INIT_FRAME]
    with pytest.raises(FrameError, match="unexpected STREAM_INIT"):
        dec.feed(INIT)


def test_expect_init_false() -> None:
    dec = FrameDecoder(expect_init=False)
    assert dec.feed(encode_data(b"a")) == [Data(b"a")]
    with pytest.raises(FrameError, match="unexpected STREAM_INIT"):
        dec.feed(INIT)


@pytest.mark.parametrize("status", [2, 255])
def test_bad_response_status(status: int) -> None:
    expect_error(INIT + frame(4, b"\x00" * 8 + bytes([status])), f"status {status}")


def test_failed_decoder_stays_failed() -> None:
    dec = expect_error(INIT + frame(9, b""), "unknown frame type")
    assert dec.failed
    assert dec.buffered == 0
    for data in (b"", INIT, encode_data(b"x")):
        with pytest.raises(FrameError, match="already failed"):
            dec.feed(data)


def test_error_in_buffered_path_releases_buffer() -> None:
    dec = FrameDecoder()
    assert dec.feed(INIT[:3]) == []
    with pytest.raises(FrameError):
        dec.feed(INIT[3:] + frame(1, init_body(b"n", b"a", b"s") + b"junk"))
    assert dec.buffered == 0


# ------------------------------------------------------------------- encoders


@pytest.mark.parametrize("cid", [-1, 2**64, 2**70, 1.5, "7", None])
def test_encoders_reject_bad_correlation_ids(cid: object) -> None:
    for encode in (encode_request_frame, encode_response_frame):
        with pytest.raises(FrameError, match="correlation id"):
            encode(cid, b"")  # type: ignore[arg-type]
    with pytest.raises(FrameError, match="correlation id"):
        encode_error_response_frame(cid, "x")  # type: ignore[arg-type]


def test_encoders_accept_id_bounds() -> None:
    for cid in (0, 2**64 - 1):
        assert decode_all(encode_request_frame(cid, b""), expect_init=False) == [RequestFrame(cid, b"")]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", "a", "s"), "node_id must not be empty"),
        (("n", "", "s"), "app_id must not be empty"),
        (("n", "a", ""), "stream_name must not be empty"),
        (("n" * 256, "a", "s"), "node_id is 256 UTF-8 bytes"),
        (("n", "é" * 128, "s"), "app_id is 256 UTF-8 bytes"),
        (("n", "a", "\ud800"), "stream_name is not encodable"),
        (("n", 5, "s"), "app_id must be a str"),
    ],
)
def test_encode_stream_init_rejects_bad_strings(args: tuple[object, ...], match: str) -> None:
    with pytest.raises(FrameError, match=match):
        encode_stream_init(*args)  # type: ignore[arg-type]


def test_encode_stream_init_max_lengths() -> None:
    long = "é" * 127 + "x"  # 255 bytes
    encoded = encode_stream_init(long, long, long)
    assert decode_all(encoded) == [StreamInit(1, long, long, long)]


def test_encoders_reject_oversize() -> None:
    limit = 20
    # bodies of exactly the limit are fine
    assert len(encode_data(b"x" * 19, max_frame_size=limit)) == 4 + limit
    assert len(encode_request_frame(1, b"x" * 11, max_frame_size=limit)) == 4 + limit
    assert len(encode_response_frame(1, b"x" * 10, max_frame_size=limit)) == 4 + limit
    assert len(encode_error_response_frame(1, "x" * 10, max_frame_size=limit)) == 4 + limit
    cases = [
        lambda: encode_data(b"x" * 20, max_frame_size=limit),
        lambda: encode_request_frame(1, b"x" * 12, max_frame_size=limit),
        lambda: encode_response_frame(1, b"x" * 11, max_frame_size=limit),
        lambda: encode_error_response_frame(1, "x" * 11, max_frame_size=limit),
        lambda: encode_stream_init("n" * 11, "a", "s", max_frame_size=limit),
    ]
    for case in cases:
        message = f"frame of 2[01] bytes exceeds max_frame_size {limit}"
        with pytest.raises(FrameError, match=message):
            case()


def test_error_message_truncation() -> None:
    def decoded(message: str) -> str:
        (resp,) = decode_all(encode_error_response_frame(1, message), expect_init=False)
        return resp.error  # type: ignore[attr-defined,no-any-return]

    assert decoded("a" * 5000) == "a" * MAX_ERROR_MESSAGE_BYTES
    assert decoded("é" * 3000) == "é" * 2048  # 2 bytes each: exact fit
    assert decoded("€" * 2000) == "€" * 1365  # 3 bytes each: 4095 bytes, cut char dropped
    assert decoded("a" + "😀" * 1100) == "a" + "😀" * 1023
    assert decoded("x" * 4096) == "x" * 4096
    assert decoded("bad \ud800 char") == "bad ? char"


@FAST
@given(st.text(alphabet=st.sampled_from("aé€😀\u0300"), min_size=1000, max_size=4200))
def test_error_message_truncation_property(message: str) -> None:
    (resp,) = decode_all(encode_error_response_frame(1, message), expect_init=False)
    error = resp.error  # type: ignore[attr-defined]
    assert message.startswith(error)
    raw = error.encode("utf-8")
    assert len(raw) <= MAX_ERROR_MESSAGE_BYTES
    if len(message.encode("utf-8")) <= MAX_ERROR_MESSAGE_BYTES:
        assert error == message
    else:
        assert len(raw) > MAX_ERROR_MESSAGE_BYTES - 4
