"""WorkerPool: a call never waits behind a blocked one while the pool has room for another worker."""

from __future__ import annotations

import threading

import pytest

from nodosum.workers import WorkerPool

from .conftest import wait_for


@pytest.fixture
def pool():
    p = WorkerPool("test-pool", 4)
    yield p
    p.shutdown()


def _warm(pool: WorkerPool) -> None:
    """One worker started and idle again, the state in which two quick submits used to share it."""
    done = threading.Event()
    pool.submit(done.set)
    assert done.wait(10)
    assert wait_for(lambda: pool._idle == 1, timeout=10)


@pytest.mark.parametrize("attempt", range(20))
def test_a_call_submitted_right_after_a_blocking_one_still_runs(pool, attempt):
    _warm(pool)
    release, ran = threading.Event(), threading.Event()
    pool.submit(release.wait, 30)
    pool.submit(ran.set)
    try:
        assert ran.wait(10), "the second call waited behind the blocked one"
    finally:
        release.set()


def test_pool_never_grows_past_its_size(pool):
    release = threading.Event()
    started = threading.Semaphore(0)

    def block() -> None:
        started.release()
        release.wait(30)

    for _ in range(10):
        pool.submit(block)
    for _ in range(4):
        assert started.acquire(timeout=10)
    assert len(pool._threads) == 4
    assert not started.acquire(timeout=0.2)  # the other six wait for a free worker
    release.set()
    for _ in range(6):
        assert started.acquire(timeout=10)


def test_exceptions_are_logged_and_the_worker_survives(caplog):
    single = WorkerPool("test-single", 1)
    try:
        done = threading.Event()

        def boom() -> None:
            raise ValueError("boom")

        single.submit(boom)
        single.submit(done.set)  # the same (only) worker runs it after logging the first one's error
        assert done.wait(10)
        assert "boom" in caplog.text
        assert len(single._threads) == 1
    finally:
        single.shutdown()
