"""Connections: the asyncio adapter of the PeerTable (loop thread only).

It feeds the table (membership changes, connection events from the QuicEndpoint,
demand from the message layer) with the loop's time, executes the actions the table
returns against the endpoint's public connection methods (dial, close, probe), and
keeps one loop timer armed at the table's next deadline. All policy is in
:mod:`nodosum.transport.peers`; what is in flight on a connection, which only the
message layer knows, comes in through ``quiet`` and ``retire``.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable
from typing import Any

from ..bridge import LoopThread, resolve
from ..errors import NodeUnreachable, RequestTimeout
from .peers import (
    Address,
    Close,
    CloseIfQuiet,
    CloseReason,
    Dial,
    FailWaiters,
    PeerTable,
    Probe,
    Retire,
    RunWaiters,
)
from .quic import ERR_DUPLICATE, ERR_MEMBER_GONE, ERR_NONE, ERR_UNRESPONSIVE, PeerConnection, QuicEndpoint

logger = logging.getLogger(__name__)

ERROR_CODES = {
    CloseReason.MEMBER_GONE: ERR_MEMBER_GONE,
    CloseReason.UNRESPONSIVE: ERR_UNRESPONSIVE,
    CloseReason.DUPLICATE: ERR_DUPLICATE,
    CloseReason.IDLE: ERR_NONE,
    CloseReason.LIMIT: ERR_NONE,
    CloseReason.UNWANTED: ERR_NONE,
}

Action = Callable[[PeerConnection], None]


class Connections:
    """The node's QUIC connections to its peers, as its PeerTable decides them."""

    def __init__(self, table: PeerTable, loop_thread: LoopThread, *, connect_timeout: float,
                 quiet: Callable[[PeerConnection], bool], retire: Callable[[PeerConnection], object]) -> None:
        self.table = table
        self.loop_thread = loop_thread
        self.connect_timeout = connect_timeout
        self._quiet = quiet
        self._retire = retire
        self.endpoint: QuicEndpoint | None = None
        self._timer: Any = None
        self._timer_at: float | None = None
        self._address_dials: dict[PeerConnection, concurrent.futures.Future[str]] = {}
        self._closing = False

    def _now(self) -> float:
        loop = self.loop_thread.loop
        assert loop is not None
        return loop.time()

    # -- demand (the message layer) --------------------------------------------------------
    def get(self, node_id: str, address: Address | None = None) -> PeerConnection | None:
        """The connection to send to ``node_id`` on now, if there is one."""
        conn: PeerConnection | None = self.table.connection(node_id, self._now(), address)
        return conn

    def wait(self, node_id: str, action: Action, result: Any, timeout: float | None = None,
             address: Address | None = None) -> None:
        """Run ``action(conn)`` once connected; else fail ``result`` (NodeUnreachable, or
        RequestTimeout after ``timeout``). Dials if no dial is under way."""
        if self._closing:
            resolve(result, error=NodeUnreachable("node is shutting down"))
            return
        now = self._now()
        patience = self.connect_timeout + 1.0  # a dial ends by then, with its own reason
        deadline = now + (patience if timeout is None else min(timeout, patience))
        self.table.wait(node_id, (action, result), deadline, now, address)
        self._execute()

    def used(self, node_id: str) -> None:
        """Traffic arrived from ``node_id``."""
        self.table.used(node_id, self._now())

    def stalled(self, node_id: str) -> None:
        """A request to ``node_id`` went unanswered: make sure its connection still leads somewhere."""
        self.table.stalled(node_id, self._now())
        self._execute()

    # -- membership -------------------------------------------------------------------------
    def member_up(self, node_id: str, address: Address) -> None:
        self.table.member_up(node_id, address, self._now())
        self._execute()

    def member_down(self, node_id: str, reason: str) -> None:
        self.table.member_down(node_id, reason, self._now())
        self._execute()

    # -- the endpoint's connection events (through the message layer) -----------------------
    def verified(self, conn: PeerConnection) -> None:
        assert conn.node_id is not None
        seed = self._address_dials.pop(conn, None)
        if seed is not None:
            resolve(seed, conn.node_id)
        self.table.connection_verified(conn, conn.node_id, conn.dialled, conn.address, self._now())
        self._execute()

    def closed(self, conn: PeerConnection, reason: str) -> None:
        seed = self._address_dials.pop(conn, None)
        if seed is not None:
            resolve(seed, error=NodeUnreachable(f"cannot connect to {conn.address[0]}:{conn.address[1]}: {reason}"))
        self.table.connection_closed(conn, self._now(), reason)
        self._execute()

    def connect_address(self, fut: concurrent.futures.Future[str], address: Address) -> None:
        """Dial an address whose node id is unknown (a seed); ``fut`` gets the id it proves."""
        assert self.endpoint is not None
        self._address_dials[self.endpoint.dial(address, None)] = fut

    def close(self) -> None:
        """Stop dialling and fail every waiter (before the endpoint closes)."""
        self._closing = True
        self.table.stop("node is shutting down")
        self._execute()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- executing the table's decisions ------------------------------------------------------
    def _execute(self) -> None:
        table = self.table
        actions = table.actions()
        while actions:
            for action in actions:
                if isinstance(action, RunWaiters):
                    conn = action.conn
                    for run, result in action.waiters:
                        if not result.done():
                            run(conn)
                elif isinstance(action, FailWaiters):
                    error_type = RequestTimeout if action.timed_out else NodeUnreachable
                    for _, result in action.waiters:
                        resolve(result, error=error_type(action.reason))
                elif isinstance(action, Dial):
                    assert self.endpoint is not None
                    table.dial_started(action.node_id, self.endpoint.dial(action.address, action.node_id))
                elif isinstance(action, CloseIfQuiet):
                    if self._quiet(action.conn):
                        self._close(action.conn, action.reason)
                    else:
                        table.busy(action.conn, self._now())
                elif isinstance(action, Close):
                    self._close(action.conn, action.reason)
                elif isinstance(action, Retire):
                    logger.debug("retiring duplicate connection %r", action.conn)
                    self._retire(action.conn)
                elif isinstance(action, Probe):
                    conn = action.conn
                    conn.probe(lambda answered, conn=conn: self._probed(conn, answered))
            actions = table.actions()
        self._arm()

    def _close(self, conn: PeerConnection, reason: CloseReason) -> None:
        if reason is CloseReason.UNRESPONSIVE:
            logger.info("connection to %s does not answer (a restart?); closing it", conn.node_id)
        conn.close(ERROR_CODES[reason], reason.value)

    def _probed(self, conn: PeerConnection, answered: bool) -> None:
        self.table.probe_result(conn, answered, self._now())
        self._execute()

    def _arm(self) -> None:
        deadline = self.table.next_deadline()
        if deadline is None or (self._timer_at is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = self.loop_thread.loop
        assert loop is not None
        self._timer_at = deadline
        self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self.table.tick(self._now())
        self._execute()
