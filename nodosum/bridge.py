"""The background event-loop thread and the blocking bridge to it.

A :class:`LoopThread` owns one thread running one asyncio loop (uvloop when it is
installed and wanted) plus a bounded pool of worker threads for user callbacks.
Callers hand work to the loop with :meth:`LoopThread.post` (a queue drained by one
``call_soon_threadsafe`` wake-up) and, when they block, wait on a ``Waiter`` or a
``concurrent.futures.Future``: no Task is created per call, which measured about
three times cheaper than ``run_coroutine_threadsafe`` here.
"""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .errors import LoopThreadError, NodeNotRunning
from .workers import WorkerPool

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _new_loop(use_uvloop: bool | None) -> asyncio.AbstractEventLoop:
    if use_uvloop is not False:
        try:
            import uvloop
        except ImportError:
            if use_uvloop:
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def resolve(fut: Any, value: Any = None, error: BaseException | None = None) -> None:
    """Complete ``fut`` (a concurrent Future or a Waiter) unless its caller gave up on it."""
    if fut.done():
        return
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled by its timed-out caller in the meantime


class Waiter:
    """A one-shot result for one blocking caller, completed from the loop thread.

    Cheaper than ``concurrent.futures.Future`` (a bare lock instead of a Condition,
    no callbacks), which matters on the request path. It has the subset of the
    Future interface that the transport uses: done, set_result, set_exception.
    """

    __slots__ = ("_lock", "_value", "_error", "_done", "_abandoned")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self._value: Any = None
        self._error: BaseException | None = None
        self._done = False
        self._abandoned = False

    def done(self) -> bool:
        return self._done or self._abandoned

    def set_result(self, value: Any) -> None:
        if not self._done:
            self._value = value
            self._done = True
            self._lock.release()

    def set_exception(self, error: BaseException) -> None:
        if not self._done:
            self._error = error
            self._done = True
            self._lock.release()

    def abandon(self) -> bool:
        """The caller stops waiting; True if no result had arrived."""
        self._abandoned = True
        return not self._done

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the result; raises TimeoutError if none comes within ``timeout``."""
        if not self._done and not self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._value


class LoopThread:
    """One asyncio loop on a daemon thread, and a worker pool for callbacks."""

    def __init__(self, name: str, *, worker_threads: int = 16, use_uvloop: bool | None = None) -> None:
        self.name = name
        self._use_uvloop = use_uvloop
        self._worker_threads = worker_threads
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._thread_ident: int | None = None
        self._pool: WorkerPool | None = None
        self._running = False
        self.forked = False  # set in a child process forked while this loop ran
        self._inbox: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._drain_pending = False

    # -- life cycle ---------------------------------------------------------
    def start(self) -> None:
        """Start the loop thread and the worker pool; returns once the loop runs."""
        if self._running:
            return
        loop = _new_loop(self._use_uvloop)
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._thread_ident = threading.get_ident()
            loop.call_soon(started.set)
            try:
                loop.run_forever()
            finally:
                self._finish_loop(loop)

        self.loop = loop
        self._pool = WorkerPool(f"{self.name}-worker", self._worker_threads)
        self._thread = threading.Thread(target=run, name=f"{self.name}-loop", daemon=True)
        self._thread.start()
        started.wait()
        self._running = True

    @staticmethod
    def _finish_loop(loop: asyncio.AbstractEventLoop) -> None:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop, join its thread and the worker pool. Idempotent."""
        if not self._running:
            return
        self._running = False
        assert self.loop is not None and self._thread is not None and self._pool is not None
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.get_ident() != self._thread_ident:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.error("loop thread %s did not stop within %.1fs", self._thread.name, timeout)
        in_worker = threading.current_thread().name.startswith(f"{self.name}-worker")
        self._pool.shutdown(wait=not in_worker)

    @property
    def running(self) -> bool:
        return self._running

    def abandon_after_fork(self) -> None:
        """In a child forked while the loop ran: its thread does not exist here, so every call
        raises NodeNotRunning, saying why."""
        self._running = False
        self.forked = True

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread_ident

    # -- the bridge -----------------------------------------------------------
    def check_can_block(self) -> None:
        """Raise unless the caller may block on the loop: the loop runs, and this is not its thread."""
        if not self._running:
            raise self._not_running()
        if threading.get_ident() == self._thread_ident:
            raise LoopThreadError(
                "a blocking nodosum method was called from the node's event-loop thread; "
                "call it from another thread (handlers already run on worker threads)"
            )

    def _not_running(self) -> NodeNotRunning:
        if self.forked:
            return NodeNotRunning(f"{self.name} was started before this process forked and its loop thread "
                                  "does not exist here; start a new Node in the child process")
        return NodeNotRunning(f"{self.name} is not running")

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run ``fn(*args)`` on the loop thread and return its result (blocking)."""
        self.check_can_block()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # delivered to the caller, not swallowed
                fut.set_exception(exc)

        self.post(run)
        return fut.result(timeout)

    def submit(self, fn: Callable[..., None], *args: Any) -> concurrent.futures.Future[Any]:
        """Queue ``fn(fut, *args)`` on the loop for a caller that will wait on ``fut``
        (``fn`` completes it now or later)."""
        self.check_can_block()
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.post(fn, fut, *args)
        return fut

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` on the loop, from any thread (the loop's own too), without waiting.

        Raises NodeNotRunning once the loop has stopped. Calls posted while a drain is
        pending share one loop wake-up (one self-pipe write with asyncio) instead of
        one each: the request path under many threads.
        """
        if not self.post_if_running(fn, *args):
            raise self._not_running()

    def post_if_running(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Like :meth:`post`, for work that is moot once the node stops (a late response, a
        cancelled request): returns False, queueing nothing, if the loop is not running."""
        loop = self.loop
        if loop is None or not self._running:
            return False
        self._inbox.append((fn, args))
        if not self._drain_pending:
            self._drain_pending = True
            try:
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop closed meanwhile
                return False
        return True

    def _drain(self) -> None:
        self._drain_pending = False  # before popping: a post from now on schedules another drain
        inbox = self._inbox
        while inbox:
            fn, args = inbox.popleft()
            try:
                fn(*args)
            except Exception:  # a bug in the posted function: never kill the loop's drain
                logger.exception("posted call %r failed", fn)

    def run_coroutine(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop (for rare operations: start, stop)."""
        try:
            self.check_can_block()
        except BaseException:
            coro.close()
            raise
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run_in_worker(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run a user callback on the worker pool, never on the loop thread."""
        if self._pool is None or not self._running:
            return
        try:
            self._pool.submit(fn, *args)
        except RuntimeError:  # pool shut down concurrently
            logger.debug("worker pool of %s is shut down; callback dropped", self.name)
