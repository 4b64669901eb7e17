"""Tests of mycel.serializers."""

from __future__ import annotations

import datetime
import decimal
import math
import threading
import uuid
import zoneinfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mycel.errors import SerializationError
from mycel.serializers import (
    BytesSerializer,
    JsonSerializer,
    PickleSerializer,
    Serializer,
    get_serializer,
    is_immutable,
)

FAST = settings(max_examples=150, deadline=None)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
pickle_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.complex_numbers(allow_nan=False)
    | st.datetimes()
    | st.decimals(allow_nan=False),
    lambda children: st.lists(children, max_size=5)
    | st.tuples(children, children)
    | st.frozensets(st.integers() | st.text(), max_size=5)
    | st.dictionaries(st.text(max_size=10) | st.integers(), children, max_size=5),
    max_leaves=20,
)


@FAST
@given(pickle_values)
def test_pickle_round_trip(value: object) -> None:
    s = PickleSerializer()
    data = s.dumps(value)
    assert isinstance(data, bytes)
    assert s.loads(data) == value


@FAST
@given(json_values)
def test_json_round_trip(value: object) -> None:
    s = JsonSerializer()
    data = s.dumps(value)
    assert isinstance(data, bytes)
    data.decode("utf-8")
    assert s.loads(data) == value


@FAST
@given(st.binary())
def test_bytes_round_trip(value: bytes) -> None:
    s = BytesSerializer()
    for given_value in (value, bytearray(value), memoryview(value)):
        data = s.dumps(given_value)
        assert type(data) is bytes and data == value
        assert s.loads(data) == value
    assert s.dumps(value) is value  # no copy


def test_json_is_compact_utf8() -> None:
    assert JsonSerializer().dumps({"a": [1, 2], "é": None}) == '{"a":[1,2],"é":null}'.encode()
    assert JsonSerializer().loads(b'{"x": 1}') == {"x": 1}
    assert JsonSerializer().loads(memoryview(b"[1]")) == [1]


@pytest.mark.parametrize(
    "value", [{1, 2}, b"bytes", object(), datetime.date(2024, 1, 1), float("nan"), math.inf, {(1, 2): 3}]
)
def test_json_refuses_non_json_values(value: object) -> None:
    with pytest.raises(SerializationError):
        JsonSerializer().dumps(value)


@pytest.mark.parametrize("data", [b"{", b"\xff\xfe", b"", b"[1,]"])
def test_json_refuses_bad_input(data: bytes) -> None:
    with pytest.raises(SerializationError):
        JsonSerializer().loads(data)


def test_pickle_errors_are_serialization_errors() -> None:
    with pytest.raises(SerializationError, match="cannot pickle"):
        PickleSerializer().dumps(threading.Lock())
    with pytest.raises(SerializationError, match="lambda|local|pickle"):
        PickleSerializer().dumps(lambda: None)
    for bad in (b"", b"garbage", PickleSerializer().dumps([1, 2, 3])[:-2]):
        with pytest.raises(SerializationError):
            PickleSerializer().loads(bad)


@pytest.mark.parametrize("value", ["text", 1, None, [b"x"]])
def test_bytes_refuses_other_types(value: object) -> None:
    with pytest.raises(SerializationError, match="bytes"):
        BytesSerializer().dumps(value)


def test_serialization_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        BytesSerializer().dumps("x")


def test_get_serializer() -> None:
    assert isinstance(get_serializer("pickle"), PickleSerializer)
    assert isinstance(get_serializer("JSON"), JsonSerializer)
    assert isinstance(get_serializer("bytes"), BytesSerializer)
    assert get_serializer("pickle") is get_serializer("pickle")
    for s in (get_serializer(n) for n in ("pickle", "json", "bytes")):
        assert isinstance(s, Serializer)
    custom = JsonSerializer()
    assert get_serializer(custom) is custom
    assert isinstance(get_serializer(JsonSerializer), JsonSerializer)  # a class is instantiated

    class Upper:
        def dumps(self, value: object) -> bytes:
            return str(value).upper().encode()

        def loads(self, data: bytes) -> object:
            return data.decode()

    upper = Upper()
    assert get_serializer(upper) is upper
    with pytest.raises(ValueError, match="unknown serializer 'yaml'"):
        get_serializer("yaml")
    with pytest.raises(TypeError):
        get_serializer(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        10**100,
        1.5,
        1j,
        "s",
        b"b",
        (),
        (1, "a", (2.0, (None, b"x"))),
        frozenset({1, (2, 3)}),
        decimal.Decimal("1.5"),
        datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
        datetime.datetime(2024, 1, 1, tzinfo=zoneinfo.ZoneInfo("UTC")),
        datetime.date(2024, 1, 1),
        datetime.timedelta(1),
        uuid.UUID(int=5),
    ],
)
def test_immutable_values(value: object) -> None:
    assert is_immutable(value) is True


class MyStr(str):
    pass


class MyTz(datetime.tzinfo):
    def utcoffset(self, dt: object) -> datetime.timedelta:
        return datetime.timedelta(0)


@pytest.mark.parametrize(
    "value",
    [
        [],
        {},
        set(),
        bytearray(b"x"),
        (1, [2]),
        ((1, 2), (3, {})),
        frozenset({(1, MyStr("x"))}),
        MyStr("x"),  # a subclass may carry mutable attributes
        object(),
        datetime.datetime(2024, 1, 1, tzinfo=MyTz()),
    ],
)
def test_mutable_values(value: object) -> None:
    assert is_immutable(value) is False


def test_is_immutable_deep_nesting_does_not_recurse() -> None:
    value: object = 1
    for _ in range(100_000):
        value = (value,)
    assert is_immutable(value) is True
