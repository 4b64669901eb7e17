"""Tests of mycel.protocol: the cache operation codec."""

from __future__ import annotations

import pickle
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mycel.errors import (
    BucketConflict,
    BucketNotFound,
    CacheTimeout,
    KeyNotFound,
    MycelError,
    NotAnInteger,
    ProtocolError,
    QuorumNotReached,
    SerializationError,
    ValueTooLarge,
)
from mycel.protocol import (
    MAX_ERROR_MESSAGE_BYTES,
    AddRequest,
    AddResponse,
    ApplyRequest,
    ApplyResponse,
    BucketsRequest,
    BucketsResponse,
    CompareDeleteRequest,
    CompareDeleteResponse,
    ErrorCode,
    ErrorResponse,
    GetRequest,
    GetResponse,
    IncrRequest,
    IncrResponse,
    Op,
    Record,
    ScanRequest,
    ScanResponse,
    SetTtlRequest,
    SetTtlResponse,
    StatsRequest,
    StatsResponse,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from mycel.store import BucketSpec

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ strategies

texts = st.text(max_size=30)
node_ids = st.text(max_size=20)
versions = st.tuples(st.integers(0, 2**64 - 1), node_ids)
ttls = st.none() | st.floats(allow_nan=False)
datas = st.none() | st.binary(max_size=64)
records = st.builds(Record, texts, texts, datas, versions, ttls)
specs = st.builds(
    BucketSpec, texts, st.none() | st.floats(allow_nan=False), st.none() | st.integers(0, 2**64 - 1)
)
i64 = st.integers(-(2**63), 2**63 - 1)
u64 = st.integers(0, 2**64 - 1)
clears = st.dictionaries(texts, versions, max_size=4)

requests = st.one_of(
    st.builds(GetRequest, texts, st.lists(texts, max_size=10)),
    st.builds(ApplyRequest, st.lists(records, max_size=5)),
    st.builds(AddRequest, texts, texts, st.binary(max_size=64), ttls),
    st.builds(IncrRequest, texts, texts, i64),
    st.builds(SetTtlRequest, texts, texts, ttls),
    st.builds(BucketsRequest, st.lists(specs, max_size=5), st.booleans(), clears),
    st.builds(CompareDeleteRequest, texts, texts, st.binary(max_size=64)),
    st.builds(ScanRequest, texts, st.none() | texts, u64, st.integers(0, 2**32 - 1)),
    st.builds(StatsRequest),
)
error_responses = st.builds(
    ErrorResponse,
    st.sampled_from(list(ErrorCode)),
    st.text(max_size=50),
    texts,
    texts,
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
)
responses = st.one_of(
    st.builds(GetResponse, st.lists(st.none() | records, max_size=5)),
    st.builds(ApplyResponse, st.lists(st.tuples(st.booleans(), st.booleans()), max_size=10)),
    st.builds(AddResponse, st.booleans(), st.none() | versions),
    st.builds(IncrResponse, i64, versions),
    st.builds(SetTtlResponse, st.booleans()),
    st.builds(BucketsResponse, st.lists(specs, max_size=5), clears, u64),
    st.builds(CompareDeleteResponse, st.booleans()),
    st.builds(ScanResponse, st.lists(texts, max_size=10), u64),
    st.builds(StatsResponse, st.dictionaries(texts, i64, max_size=8), st.dictionaries(texts, u64, max_size=4)),
)

RECORD = Record("users", "alice", b"\x80\x05value", (123456789 << 16, "node-1"), 29.5)
SAMPLE_REQUESTS: list[Any] = [
    GetRequest("users", ["alice", "bob", "é"]),
    ApplyRequest([RECORD, Record("other", "k", None, (1, ""), None)]),
    AddRequest("users", "alice", b"data", 10.0),
    IncrRequest("counters", "hits", -(2**63)),
    SetTtlRequest("users", "alice", None),
    BucketsRequest([BucketSpec("a"), BucketSpec("b", 10.0, 1000)]),
    BucketsRequest([], fresh=True),
    BucketsRequest([BucketSpec("a")], cleared={"a": (99 << 16, "node-1"), "é": (1, "")}),
    CompareDeleteRequest("locks", "lock:1", b"\x80\x05token"),
    ScanRequest("users", None, 0, 1000),
    ScanRequest("users", "user:*[0-9]", (7 << 32) | 1234, 1),
    StatsRequest(),
]
SAMPLE_RESPONSES: list[tuple[Op, Any]] = [
    (Op.GET, GetResponse([RECORD, None, Record("users", "x", None, (5, "n"), 3.0)])),
    (Op.APPLY, ApplyResponse([(True, False), (False, True), (True, True), (False, False)])),
    (Op.ADD, AddResponse(True, (42, "node-2"))),
    (Op.ADD, AddResponse(False, None)),
    (Op.INCR, IncrResponse(2**63 - 1, (7, "n"))),
    (Op.SET_TTL, SetTtlResponse(True)),
    (Op.BUCKETS, BucketsResponse([BucketSpec("a", None, 5)])),
    (Op.BUCKETS, BucketsResponse([BucketSpec("a")], {"a": (5, "n")}, 2**64 - 1)),
    (Op.COMPARE_DELETE, CompareDeleteResponse(True)),
    (Op.SCAN, ScanResponse(["a", "b", "é"], 0)),
    (Op.SCAN, ScanResponse([], (3 << 32) | 10)),
    (Op.STATS, StatsResponse({"hits": 10, "errors": 0, "clock_skew": -5}, {"users": 3, "b": 0})),
    (Op.GET, ErrorResponse(ErrorCode.KEY_NOT_FOUND, "key 'k' not found", "b", "k")),
]


def valid_encodings() -> list[tuple[str, Op | None, bytes]]:
    out: list[tuple[str, Op | None, bytes]] = [
        (type(r).__name__, None, encode_request(r)) for r in SAMPLE_REQUESTS
    ]
    out += [(type(r).__name__, op, encode_response(r)) for op, r in SAMPLE_RESPONSES]
    return out


def decode(op: Op | None, data: bytes) -> object:
    return decode_request(data) if op is None else decode_response(op, data)


# ------------------------------------------------------------------ round trips


@FAST
@given(requests)
def test_request_round_trip(req: Any) -> None:
    assert decode_request(encode_request(req)) == req


@FAST
@given(responses)
def test_response_round_trip(resp: Any) -> None:
    decoded = decode_response(resp.op, encode_response(resp))
    assert decoded == resp
    assert type(decoded) is type(resp)


@FAST
@given(error_responses, st.sampled_from(list(Op)))
def test_error_response_round_trip(resp: ErrorResponse, op: Op) -> None:
    decoded = decode_response(op, encode_response(resp))
    assert decoded == resp
    assert isinstance(decoded, ErrorResponse) and isinstance(decoded.code, ErrorCode)


@pytest.mark.parametrize("req", SAMPLE_REQUESTS, ids=lambda r: type(r).__name__)
def test_sample_requests_round_trip(req: Any) -> None:
    decoded = decode_request(encode_request(req))
    assert decoded == req and decoded.op == req.op


def test_types_survive_decoding() -> None:
    decoded = decode_request(encode_request(ApplyRequest([RECORD])))
    assert isinstance(decoded, ApplyRequest)
    record = decoded.records[0]
    assert type(record.data) is bytes and type(record.version) is tuple
    assert type(record.ttl) is float
    decoded_buckets = decode_request(encode_request(SAMPLE_REQUESTS[5]))
    assert isinstance(decoded_buckets, BucketsRequest)
    assert all(type(s) is BucketSpec for s in decoded_buckets.specs)


def test_big_batches_round_trip() -> None:
    keys = [f"key:{i}" for i in range(1000)]
    assert decode_request(encode_request(GetRequest("b", keys))) == GetRequest("b", keys)
    recs = [Record("b", k, b"x" * 100, (i, "node"), float(i)) for i, k in enumerate(keys)]
    resp = GetResponse([r if i % 3 else None for i, r in enumerate(recs)])
    assert decode_response(Op.GET, encode_response(resp)) == resp


def test_long_strings_and_data() -> None:
    key = "k" * 65535
    req = AddRequest("b", key, b"\x00" * 100_000, None)
    assert decode_request(encode_request(req)) == req


def test_wire_format_is_stable() -> None:
    assert encode_request(GetRequest("b", ["k"])) == b"\x02\x01\x00\x01b\x00\x00\x00\x01\x00\x01k"
    assert encode_response(SetTtlResponse(True)) == b"\x02\x00\x01"
    assert encode_request(IncrRequest("b", "k", -1)) == b"\x02\x04\x00\x01b\x00\x01k" + b"\xff" * 8
    assert encode_response(ApplyResponse([(True, True), (False, True)])) == (
        b"\x02\x00\x00\x00\x00\x02\x03\x02"
    )


def test_infinite_ttl_travels() -> None:
    for req in (AddRequest("b", "k", b"v", float("inf")), SetTtlRequest("b", "k", float("inf"))):
        assert decode_request(encode_request(req)).ttl == float("inf")  # type: ignore[union-attr]
    record = Record("b", "k", b"v", (1, "n"), float("inf"))
    assert decode_request(encode_request(ApplyRequest([record]))) == ApplyRequest([record])


def test_new_ops_wire_format() -> None:
    assert encode_request(StatsRequest()) == b"\x02\x09"
    assert encode_request(ScanRequest("b", None, 0, 2)) == b"\x02\x08\x00\x01b\x00" + b"\x00" * 8 + b"\x00\x00\x00\x02"
    assert encode_response(CompareDeleteResponse(False)) == b"\x02\x00\x00"
    assert encode_request(BucketsRequest([], False, {"b": (1, "n")})) == (
        b"\x02\x06\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01b" + b"\x00" * 7 + b"\x01\x01n")


# ------------------------------------------------------------------ encoding errors


@pytest.mark.parametrize("delta", [2**63, -(2**63) - 1, 10**30])
def test_delta_out_of_range(delta: int) -> None:
    with pytest.raises(ValueError, match="64-bit"):
        encode_request(IncrRequest("b", "k", delta))


def test_incr_result_out_of_range() -> None:
    with pytest.raises(ValueError, match="64-bit"):
        encode_response(IncrResponse(2**63, (1, "n")))


def test_delta_must_be_int() -> None:
    with pytest.raises(TypeError):
        encode_request(IncrRequest("b", "k", 1.5))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "msg",
    [
        GetRequest("b", ["k" * 65536]),
        GetRequest("b" * 65536, ["k"]),
        AddRequest("b", "é" * 40000, b"", None),
        SetTtlRequest("b", "k", float("nan")),
        ApplyRequest([Record("b", "k", b"", (1, "n" * 256), None)]),
        ApplyRequest([Record("b", "k", b"", (-1, "n"), None)]),
        ApplyRequest([Record("b", "k", b"", (2**64, "n"), None)]),
        ApplyRequest([Record("b", "k", b"", (1, "n"), float("nan"))]),
        BucketsRequest([BucketSpec("b", float("nan"))]),
        BucketsRequest([BucketSpec("b", None, -1)]),
        BucketsRequest([], cleared={"b": (-1, "n")}),
        ScanRequest("b", "p", -1, 10),
        ScanRequest("b", "p" * 65536, 0, 10),
        ScanRequest("b", None, 0, 2**32),
        CompareDeleteRequest("b" * 65536, "k", b""),
    ],
)
def test_unencodable_fields_raise_value_error(msg: Any) -> None:
    with pytest.raises(ValueError):
        encode_request(msg)


@pytest.mark.parametrize(
    "resp",
    [StatsResponse({"x": 2**63}, {}), StatsResponse({}, {"b": -1}), ScanResponse(["k" * 65536], 0),
     ScanResponse([], -1), BucketsResponse([], {}, 2**64)],
)
def test_unencodable_response_fields_raise_value_error(resp: Any) -> None:
    with pytest.raises(ValueError):
        encode_response(resp)


def test_unknown_message_types() -> None:
    with pytest.raises(TypeError):
        encode_request(GetResponse([]))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_response(GetRequest("b", []))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_request(ApplyRequest([None]))  # type: ignore[list-item]


def test_long_error_message_is_truncated_on_a_character_boundary() -> None:
    resp = ErrorResponse(ErrorCode.INTERNAL, "é" * 5000)
    decoded = decode_response(Op.GET, encode_response(resp))
    assert isinstance(decoded, ErrorResponse)
    assert decoded.message == "é" * (MAX_ERROR_MESSAGE_BYTES // 2)
    surrogate = decode_response(Op.GET, encode_response(ErrorResponse(ErrorCode.INTERNAL, "a\udc80")))
    assert surrogate.message == "a?"  # type: ignore[union-attr]


# ------------------------------------------------------------------ hostile input


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_raise_protocol_error_only(data: bytes) -> None:
    for op in (None, *Op):
        try:
            decode(op, data)
        except ProtocolError:
            pass


@FUZZ
@given(st.binary(max_size=100), st.sampled_from(list(Op)))
def test_random_bodies_after_a_valid_header(body: bytes, op: Op) -> None:
    for data in (bytes([2, op]) + body, b"\x02\x00" + body, b"\x02\x01" + body):
        for decode_op in (None, op):
            try:
                decode(decode_op, data)
            except ProtocolError:
                pass


@FUZZ
@given(st.data())
def test_mutated_valid_encodings(data: st.DataObject) -> None:
    _, op, raw = data.draw(st.sampled_from(valid_encodings()))
    mutated = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        mutated[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        decode(op, bytes(mutated))
    except ProtocolError:
        pass


@pytest.mark.parametrize("name, op, raw", valid_encodings(), ids=lambda x: str(x)[:20])
def test_every_truncation_is_rejected(name: str, op: Op | None, raw: bytes) -> None:
    decode(op, raw)  # the whole message is fine
    for cut in range(len(raw)):
        with pytest.raises(ProtocolError):
            decode(op, raw[:cut])


@pytest.mark.parametrize("name, op, raw", valid_encodings(), ids=lambda x: str(x)[:20])
def test_trailing_bytes_are_rejected(name: str, op: Op | None, raw: bytes) -> None:
    for extra in (b"\x00", b"\x01", b"garbage"):
        with pytest.raises(ProtocolError, match="trailing"):
            decode(op, raw + extra)


@pytest.mark.parametrize(
    "op, data",
    [
        (None, b"\x02\x01\x00\x01b\xff\xff\xff\xff"),  # GET: 4 billion keys
        (None, b"\x02\x02\xff\xff\xff\xff"),  # APPLY: 4 billion records
        (None, b"\x02\x06\xff\xff\xff\xff"),  # BUCKETS
        (None, b"\x02\x06\x00\x00\x00\x00\x00\xff\xff\xff\xff"),  # BUCKETS: clear versions
        (Op.SCAN, b"\x02\x00\xff\xff\xff\xff"),
        (Op.STATS, b"\x02\x00\xff\xff\xff\xff"),
        (Op.GET, b"\x02\x00\xff\xff\xff\xff"),
        (Op.APPLY, b"\x02\x00\xff\xff\xff\xff"),
        (Op.BUCKETS, b"\x02\x00\xff\xff\xff\xff" + b"\x00" * 100),
    ],
)
def test_huge_counts_are_refused_before_reading(op: Op | None, data: bytes) -> None:
    with pytest.raises(ProtocolError, match="declared"):
        decode(op, data)


def test_huge_declared_lengths_are_refused() -> None:
    data = b"\x02\x03\x00\x01b\x00\x01k\xff\xff\xff\xff" + b"x" * 10
    with pytest.raises(ProtocolError, match="truncated"):
        decode_request(data)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "too short"),
        (b"\x02", "too short"),
        (b"\x01\x01\x00\x01b\x00\x00\x00\x00", "version"),  # version 1: the format before clear versions
        (b"\x02\x00", "unknown op"),
        (b"\x02\x63", "unknown op"),
        (b"\x02\x01\x00\x02\xff\xfe\x00\x00\x00\x00", "malformed"),  # bad UTF-8
        (b"\x02\x05\x00\x01b\x00\x01k\x02", "flag"),  # ttl flag 2
        (b"\x02\x05\x00\x01b\x00\x01k\x01" + struct.pack(">d", float("nan")), "NaN"),
    ],
)
def test_specific_request_errors(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_request(data)


def test_specific_response_errors() -> None:
    with pytest.raises(ProtocolError, match="status"):
        decode_response(Op.SET_TTL, b"\x02\x02\x01")
    with pytest.raises(ProtocolError, match="flag"):
        decode_response(Op.SET_TTL, b"\x02\x00\x02")
    with pytest.raises(ProtocolError, match="bits"):
        decode_response(Op.APPLY, b"\x02\x00\x00\x00\x00\x01\x04")
    with pytest.raises(ProtocolError, match="error code"):
        decode_response(Op.GET, b"\x02\x01\xee" + b"\x00" * 22)
    with pytest.raises(ProtocolError, match="unknown op"):
        decode_response(99, b"\x02\x00")  # type: ignore[arg-type]


def test_accepts_bytearray_and_memoryview() -> None:
    raw = encode_request(SAMPLE_REQUESTS[0])
    assert decode_request(bytearray(raw)) == SAMPLE_REQUESTS[0]
    assert decode_request(memoryview(raw)) == SAMPLE_REQUESTS[0]


def test_protocol_never_unpickles() -> None:
    for payload in (pickle.dumps(SAMPLE_REQUESTS[0]), pickle.dumps([1, 2, 3], 2)):
        with pytest.raises(ProtocolError):
            decode_request(payload)
        with pytest.raises(ProtocolError):
            decode_response(Op.GET, payload)


# ------------------------------------------------------------------ errors <-> exceptions


def test_to_exception_mapping() -> None:
    exc = ErrorResponse(ErrorCode.BUCKET_NOT_FOUND, "no bucket", bucket="b").to_exception()
    assert isinstance(exc, BucketNotFound) and exc.bucket == "b" and str(exc) == "no bucket"
    exc = ErrorResponse(ErrorCode.KEY_NOT_FOUND, "no key", "b", "k").to_exception()
    assert isinstance(exc, KeyNotFound) and (exc.bucket, exc.key) == ("b", "k")
    assert str(exc) == "no key"
    assert isinstance(ErrorResponse(ErrorCode.NOT_INTEGER, "x").to_exception(), NotAnInteger)
    assert isinstance(ErrorResponse(ErrorCode.CONFLICT, "x").to_exception(), BucketConflict)
    exc = ErrorResponse(ErrorCode.TOO_LARGE, "big", size=10, limit=5).to_exception()
    assert isinstance(exc, ValueTooLarge) and (exc.size, exc.limit) == (10, 5)
    for code in (ErrorCode.BAD_REQUEST, ErrorCode.INTERNAL):
        exc = ErrorResponse(code, "msg").to_exception()
        assert type(exc) is MycelError and str(exc) == "msg"


@pytest.mark.parametrize(
    "exc, code",
    [
        (BucketNotFound("b"), ErrorCode.BUCKET_NOT_FOUND),
        (KeyNotFound("b", "k"), ErrorCode.KEY_NOT_FOUND),
        (NotAnInteger("x"), ErrorCode.NOT_INTEGER),
        (BucketConflict("x"), ErrorCode.CONFLICT),
        (ValueTooLarge(10, 5), ErrorCode.TOO_LARGE),
        (ProtocolError("x"), ErrorCode.BAD_REQUEST),
        (ValueError("bad ttl"), ErrorCode.BAD_REQUEST),
        (RuntimeError("boom"), ErrorCode.INTERNAL),
    ],
)
def test_from_exception_round_trip(exc: Exception, code: ErrorCode) -> None:
    resp = ErrorResponse.from_exception(exc)
    assert resp.code == code
    decoded = decode_response(Op.GET, encode_response(resp))
    again = decoded.to_exception()  # type: ignore[union-attr]
    assert isinstance(again, MycelError)
    if isinstance(exc, MycelError) and code != ErrorCode.BAD_REQUEST:
        assert type(again) is type(exc)
        assert str(again) == str(exc)
        assert vars(again) == vars(exc)
    if code == ErrorCode.INTERNAL:
        assert "RuntimeError: boom" in str(again)


# ------------------------------------------------------------------ mycel.errors


def test_error_hierarchy() -> None:
    assert issubclass(BucketNotFound, LookupError)
    assert issubclass(KeyNotFound, KeyError)
    assert issubclass(ValueTooLarge, ValueError)
    assert issubclass(CacheTimeout, TimeoutError)
    assert issubclass(BucketConflict, ValueError)
    assert issubclass(NotAnInteger, TypeError)
    assert issubclass(ProtocolError, ValueError)
    assert issubclass(SerializationError, ValueError)
    for cls in (BucketNotFound, KeyNotFound, QuorumNotReached, ValueTooLarge, CacheTimeout,
                BucketConflict, NotAnInteger, ProtocolError, SerializationError):
        assert issubclass(cls, MycelError)


def test_error_messages_and_attributes() -> None:
    exc = KeyNotFound("users", "alice")
    assert str(exc) == "key 'alice' not found in bucket 'users'"  # not KeyError's quoted repr
    assert (exc.bucket, exc.key) == ("users", "alice")
    exc2 = QuorumNotReached(acked=1, needed=2, replicas=3)
    assert "1 of 3 replicas acknowledged, 2 needed" in str(exc2)
    assert (exc2.acked, exc2.needed, exc2.replicas) == (1, 2, 3)
    exc3 = ValueTooLarge(2000, 1000)
    assert "2000" in str(exc3) and "1000" in str(exc3)
    assert "create_bucket" in str(BucketNotFound("b"))


@pytest.mark.parametrize(
    "exc",
    [BucketNotFound("b"), KeyNotFound("b", "k"), QuorumNotReached(1, 2, 3), ValueTooLarge(5, 4),
     CacheTimeout("slow"), ProtocolError("bad")],
)
def test_errors_pickle(exc: MycelError) -> None:
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is type(exc) and str(again) == str(exc) and vars(again) == vars(exc)
