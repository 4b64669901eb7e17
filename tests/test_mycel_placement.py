"""Tests of mycel.placement: rendezvous hashing."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mycel.placement import Placement, key_hash, member_hash, score

NODES = [f"node-{i}" for i in range(10)]
KEYS = [f"key:{i}" for i in range(100_000)]


@pytest.fixture(scope="module")
def hashes() -> list[int]:
    return [key_hash("bucket", k) for k in KEYS]


@pytest.fixture(scope="module")
def primaries(hashes: list[int]) -> list[str]:
    placement = Placement(NODES)
    return [placement.replicas_for_hash(h, 1)[0] for h in hashes]


def test_pinned_hash_values() -> None:
    # Placement must agree across processes, machines and releases: these values must never change.
    assert key_hash("users", "alice") == 1751571795932012517
    assert key_hash("", "") == 4090666977639654086
    assert key_hash("ab", "c") == 11992538279138757827
    assert key_hash("a", "bc") == 9717499164610050242
    assert member_hash("node-1") == 11024716221775736802
    assert score(1, 2) == score(2, 1)
    placement = Placement([f"n{i}" for i in range(5)])
    assert placement.replicas("users", "alice", 3) == ["n1", "n0", "n4"]
    assert placement.replicas("b", "k", 5) == ["n3", "n0", "n4", "n2", "n1"]


def test_length_prefix_separates_bucket_and_key() -> None:
    assert key_hash("ab", "c") != key_hash("a", "bc")
    assert key_hash("", "abc") != key_hash("abc", "")
    assert key_hash("a\x00", "b") != key_hash("a", "\x00b")


def test_hashes_are_64_bit() -> None:
    values = [key_hash("b", f"k{i}") for i in range(1000)] + [member_hash(f"m{i}") for i in range(1000)]
    assert all(0 <= h < 2**64 for h in values)
    assert max(values) > 2**63  # uses the top bit too
    assert len(set(values)) == len(values)


def test_primary_share_is_uniform(primaries: list[str]) -> None:
    counts = Counter(primaries)
    assert set(counts) == set(NODES)
    uniform = len(KEYS) / len(NODES)
    for node, count in counts.items():
        assert abs(count - uniform) <= 0.10 * uniform, (node, count)


def test_replica_sets_are_distinct_members_primary_first(hashes: list[int]) -> None:
    placement = Placement(NODES)
    for h in hashes[:5000]:
        replicas = placement.replicas_for_hash(h, 3)
        assert len(replicas) == 3 == len(set(replicas))
        assert set(replicas) <= set(NODES)
        assert replicas[0] == placement.replicas_for_hash(h, 1)[0]
        assert replicas == placement.replicas_for_hash(h, 10)[:3]  # prefixes of one ranking


def test_second_replica_is_uniform(hashes: list[int]) -> None:
    placement = Placement(NODES)
    seconds = Counter(placement.replicas_for_hash(h, 2)[1] for h in hashes[:50_000])
    for count in seconds.values():
        assert abs(count - 5000) <= 500


def test_n_is_capped_at_cluster_size() -> None:
    placement = Placement(["a", "b"])
    assert sorted(placement.replicas("x", "k", 5)) == ["a", "b"]
    assert Placement([]).replicas("x", "k", 3) == []
    with pytest.raises(ValueError):
        placement.replicas("x", "k", 0)
    with pytest.raises(LookupError):
        Placement([]).primary("x", "k")


def test_adding_a_member_moves_about_one_in_eleven_to_it(
    hashes: list[int], primaries: list[str]
) -> None:
    grown = Placement(NODES + ["node-10"])
    moved = 0
    for h, before in zip(hashes, primaries):
        after = grown.replicas_for_hash(h, 1)[0]
        if after != before:
            moved += 1
            assert after == "node-10"
    assert 0.07 <= moved / len(KEYS) <= 0.115


def test_adding_a_member_only_changes_replica_sets_by_including_it(hashes: list[int]) -> None:
    old, new = Placement(NODES), Placement(NODES + ["node-10"])
    for h in hashes[:5000]:
        before, after = old.replicas_for_hash(h, 3), new.replicas_for_hash(h, 3)
        if before != after:
            assert "node-10" in after
            assert [n for n in after if n != "node-10"] == before[: len(after) - 1]


def test_removing_a_member_moves_only_its_keys(hashes: list[int], primaries: list[str]) -> None:
    shrunk = Placement([n for n in NODES if n != "node-3"])
    moved = 0
    for h, before in zip(hashes, primaries):
        after = shrunk.replicas_for_hash(h, 1)[0]
        if before == "node-3":
            moved += 1
        else:
            assert after == before
    assert moved == Counter(primaries)["node-3"]
    old = Placement(NODES)
    for h in hashes[:5000]:
        before, after = old.replicas_for_hash(h, 3), shrunk.replicas_for_hash(h, 3)
        if "node-3" not in before:
            assert after == before
        else:  # the survivors keep their order; the next member fills in at the end
            assert after[:2] == [n for n in before if n != "node-3"]


def test_member_order_and_duplicates_do_not_matter() -> None:
    a = Placement(["c", "a", "b", "a"])
    b = Placement(["a", "b", "c"])
    assert a == b and hash(a) == hash(b)
    assert a.members == ("a", "b", "c")
    assert len(a) == 3 and "a" in a and "z" not in a and list(a) == ["a", "b", "c"]
    assert a != Placement(["a", "b"])
    assert {a: 1}[b] == 1
    assert a.replicas("x", "k", 3) == b.replicas("x", "k", 3)
    assert "Placement" in repr(a)


def test_members_must_be_strings() -> None:
    with pytest.raises(TypeError):
        Placement([1, 2])  # type: ignore[list-item]


@settings(max_examples=200, deadline=None)
@given(
    bucket=st.text(max_size=20),
    key=st.text(max_size=40),
    members=st.sets(st.text(min_size=1, max_size=10), min_size=1, max_size=12),
    n=st.integers(1, 15),
)
def test_replicas_properties(bucket: str, key: str, members: set[str], n: int) -> None:
    placement = Placement(members)
    replicas = placement.replicas(bucket, key, n)
    assert len(replicas) == min(n, len(members)) == len(set(replicas))
    assert set(replicas) <= members
    assert replicas[0] == placement.primary(bucket, key)
    assert replicas == Placement(sorted(members, reverse=True)).replicas(bucket, key, n)
