"""Tests of mycel.versions: the hybrid logical clock."""

from __future__ import annotations

import logging
import threading

from mycel.versions import LOGICAL_BITS, ZERO_VERSION, HybridClock, version_millis


class FakeWall:
    """A settable wall clock (seconds since the epoch)."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_value_is_millis_shifted_with_node_id() -> None:
    wall = FakeWall(1_700_000_000.123)
    version = HybridClock("a", wall).now()
    assert version == (1_700_000_000_123 << LOGICAL_BITS, "a")
    assert version_millis(version) == 1_700_000_000_123
    assert ZERO_VERSION < version


def test_strictly_increasing_when_wall_stalls() -> None:
    wall = FakeWall()
    clock = HybridClock("a", wall)
    versions = [clock.now() for _ in range(1000)]
    assert versions == sorted(set(versions))
    assert all(version_millis(v) == 1_700_000_000_000 for v in versions)
    assert versions[-1][0] - versions[0][0] == 999  # the logical counter counted


def test_strictly_increasing_when_wall_goes_backwards() -> None:
    wall = FakeWall()
    clock = HybridClock("a", wall)
    first = clock.now()
    wall.t -= 3600  # an NTP step back by an hour
    later = [clock.now() for _ in range(100)]
    assert all(v > first for v in later)
    assert later == sorted(set(later))
    # The physical part never goes backwards.
    assert all(version_millis(v) >= version_millis(first) for v in later)
    wall.t += 7200
    assert version_millis(clock.now()) == 1_700_003_600_000


def test_follows_the_wall_clock_forward() -> None:
    wall = FakeWall()
    clock = HybridClock("a", wall)
    clock.now()
    clock.now()
    wall.t += 0.005
    assert clock.now()[0] == (1_700_000_000_005 << LOGICAL_BITS)


def test_counter_overflow_carries_and_stays_monotonic() -> None:
    clock = HybridClock("a", FakeWall())
    versions = [clock.now() for _ in range((1 << LOGICAL_BITS) + 10)]
    assert versions == sorted(set(versions))


def test_observe_future_version_moves_the_clock_past_it() -> None:
    wall = FakeWall()
    mine = HybridClock("a", wall)
    theirs = HybridClock("b", FakeWall(wall.t + 30))  # 30 s ahead
    seen = theirs.now()
    assert mine.now() < seen
    mine.observe(seen)
    after = mine.now()
    assert after > seen
    assert after[1] == "a"


def test_observe_older_version_changes_nothing() -> None:
    wall = FakeWall()
    clock = HybridClock("a", wall)
    clock.now()
    before = clock.last()
    clock.observe((5, "b"))
    clock.observe(ZERO_VERSION)
    assert clock.last() == before


def test_ties_break_by_node_id() -> None:
    wall = FakeWall()
    a = HybridClock("a", wall).now()
    b = HybridClock("b", wall).now()
    assert a[0] == b[0]
    assert max(a, b) == b


def test_far_future_observation_warns_once(caplog: object) -> None:
    wall = FakeWall()
    clock = HybridClock("a", wall)
    with caplog.at_level(logging.WARNING, logger="mycel.versions"):  # type: ignore[attr-defined]
        for i in range(5):
            clock.observe((int((wall.t + 3600 + i) * 1000) << LOGICAL_BITS, "b"))
    records = [r for r in caplog.records if r.name == "mycel.versions"]  # type: ignore[attr-defined]
    assert len(records) == 1
    assert "ahead" in records[0].getMessage()


def test_thread_safety_all_versions_distinct() -> None:
    clock = HybridClock("a")
    results: list[list[tuple[int, str]]] = [[] for _ in range(16)]
    barrier = threading.Barrier(16)

    def work(out: list[tuple[int, str]]) -> None:
        barrier.wait()
        for _ in range(1000):
            out.append(clock.now())

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [v for out in results for v in out]
    assert len(set(everything)) == 16 * 1000
    for out in results:  # each thread saw a strictly increasing sequence
        assert out == sorted(out) and len(set(out)) == len(out)
