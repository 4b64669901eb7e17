"""Node: one member of a cluster, with its loop thread, endpoint and applications."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .application import Application, ReceiveHandler, RequestHandler
from .bridge import LoopThread
from .binding import advertised_host, bind_udp, is_self
from .certs import ClusterIdentity
from .config import APP_ID_RE, APPS_META_KEY, NodeConfig, parse_seed
from .errors import ApplicationError, ConfigError, NodeNotRunning, ReadyTimeout
from .membership import Member, MemberEvent, MemberEventKind, Membership, StaticMembership
from .membership.gossip import APP_ID as MEMBERSHIP_APP_ID
from .membership.gossip import GossipMembership
from .membership.keyring import Keyring
from .membership.meta import encode_meta
from .metrics import Counters
from .router import Router
from .transport.messaging import Messaging
from .transport.quic import QuicEndpoint
from .workers import SerialQueue

logger = logging.getLogger(__name__)

MemberListener = Callable[[MemberEvent], None]

_running_nodes: weakref.WeakSet[Node] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The loop thread does not exist in a forked child: such a node cannot work there.
    for node in list(_running_nodes):
        node._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Node:
    """A cluster member. Blocking and thread-safe; use as a context manager or call
    :meth:`start` and :meth:`shutdown`.

    >>> with Node(NodeConfig(ca_cert="ca.pem", ca_key="ca.key", node_id="a", port=7001)) as node:
    ...     app = node.register_application("echo")
    """

    def __init__(self, config: NodeConfig | None = None, **settings: Any) -> None:
        if config is None:
            config = NodeConfig(**settings)
        elif settings:
            config = config.replace(**settings)
        self.config = config
        self._settings = resolved = config.resolve()
        assert config.ca_cert is not None  # NodeConfig requires it
        self.identity = ClusterIdentity.from_config(
            config.node_id, config.ca_cert, config.ca_key, config.cert, config.key,
            valid_seconds=config.cert_validity,
        )
        self.counters = Counters()
        self._loop_thread = LoopThread(f"nodosum-{config.node_id}", worker_threads=config.handler_threads,
                                       use_uvloop=config.use_uvloop)
        self._apps: dict[str, Application] = {}
        self._advertised: list[str] = []  # applications listed in this node's gossiped metadata
        self._meta = dict(config.meta)  # the user's part of the metadata
        self._apps_lock = threading.Lock()
        self._listeners: list[MemberListener] = []
        self._messaging = Messaging(
            config.node_id, self._loop_thread, self, self.counters,
            max_frame_size=config.max_frame_size, max_pending_requests=config.max_pending_requests,
            max_queued_bytes=config.max_queued_bytes, connect_timeout=resolved.timing.connect_timeout,
            reconnect_min=resolved.timing.reconnect_min, reconnect_max=resolved.timing.reconnect_max,
            idle_timeout=resolved.timing.connection_idle_timeout, max_open=config.max_open_connections,
        )
        self._port = Router(config.node_id, self._loop_thread, self._messaging, self, self.counters,
                            request_timeout=config.request_timeout, max_frame_size=config.max_frame_size,
                            nodes=self._app_nodes)
        self._membership: Membership | None = None
        self._static: StaticMembership | None = None  # the same object, when membership is static
        self.keyring = Keyring(list(resolved.gossip_keys) or [Keyring.generate()])
        self._endpoint: QuicEndpoint | None = None
        self._address: tuple[str, int] | None = None
        self._advertised_address: tuple[str, int] | None = None
        self._member_ids: tuple[str, ...] = (config.node_id,)
        self._app_index: dict[str, list[str]] = {}
        self._joined = threading.Condition()
        self._state = "new"
        self._state_lock = threading.Lock()
        self._events = SerialQueue(self._loop_thread.run_in_worker, config.max_pending_requests, self.counters)

    def __repr__(self) -> str:
        return f"<Node {self.node_id!r} {self._state}>"

    # -- life cycle ------------------------------------------------------------
    @property
    def node_id(self) -> str:
        return self.config.node_id

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the node's UDP socket is bound to."""
        if self._address is None:
            raise NodeNotRunning("the node is not started")
        return self._address

    @property
    def advertised_address(self) -> tuple[str, int]:
        """The (host, port) peers are told: ``advertise``, or the bound (or detected) address."""
        if self._advertised_address is None:
            raise NodeNotRunning("the node is not started")
        return self._advertised_address

    def start(self) -> Node:
        """Bind the port, start the loop thread and join the cluster. Returns self.

        Returns without waiting for seeds: the node serves alone until one answers
        (see :meth:`ready`)."""
        with self._state_lock:
            if self._state == "running":
                return self
            if self._state != "new":
                raise NodeNotRunning(f"node {self.node_id!r} was shut down; create a new Node")
            self._loop_thread.start()
            try:
                self._loop_thread.run_coroutine(self._astart(), timeout=30)
            except BaseException:
                self._loop_thread.stop()
                self._state = "stopped"
                raise
            self._state = "running"
            _running_nodes.add(self)
        logger.info("node %s listening on %s:%d", self.node_id, *self.address)
        return self

    async def _astart(self) -> None:
        config, settings, timing = self.config, self._settings, self._settings.timing
        loop = self._loop_thread.loop
        assert loop is not None

        def make_endpoint() -> QuicEndpoint:
            return QuicEndpoint(
                self.identity, self._messaging, self.counters, idle_timeout=timing.idle_timeout,
                connect_timeout=timing.connect_timeout, keepalive_interval=timing.keepalive_interval,
                max_connections=config.max_connections,
            )

        sock = bind_udp(config.host, settings.ports)
        try:
            advertised = advertised_host(sock.getsockname()[0], settings.advertise, settings.seeds)
        except ConfigError:
            sock.close()
            raise
        transport, endpoint = await loop.create_datagram_endpoint(make_endpoint, sock=sock)
        self._endpoint = self._messaging.connections.endpoint = self._port.endpoint = endpoint
        host, port = transport.get_extra_info("sockname")[:2]
        self._address = (host, port)
        self._advertised_address = (advertised, port)
        local = Member(self.node_id, advertised, port, self._full_meta())
        membership: Membership
        if settings.membership == "static":
            peers = [Member(p.node_id, p.host, p.port) for p in settings.peers]
            membership = self._static = StaticMembership(local, peers)
        else:
            seeds = [seed for seed in settings.seeds if not is_self(seed, (host, port), advertised)]
            gossip = GossipMembership(
                local, settings.swim, keyring=self.keyring, share_keys=not settings.gossip_keys,
                label=config.gossip_label.encode(), seeds=seeds, port=self._port,
                request_timeout=config.request_timeout, on_joined=self._on_joined,
                incarnation=int(time.time() * 1000),
            )
            endpoint.non_quic_handler = gossip.datagram_received
            internal = Application(self._port, MEMBERSHIP_APP_ID)
            internal.set_request_handler(gossip.handle_push_pull, inline=True)
            self._apps[MEMBERSHIP_APP_ID] = internal
            membership = gossip
        self._membership = membership
        membership.start(self._member_event)
        self._reindex()

    def _on_joined(self) -> None:
        with self._joined:
            self._joined.notify_all()

    def ready(self, timeout: float | None = 30.0) -> None:
        """Block until this node has joined its cluster: a seed answered, or it has none
        (it started the cluster, or its membership is static).

        Connections to members are opened when first needed, not here. Raises
        ReadyTimeout if no seed answers within ``timeout`` seconds (the node keeps
        trying, and meanwhile serves alone)."""
        self._check_running()
        membership = self._membership
        assert membership is not None
        with self._joined:
            if not self._joined.wait_for(lambda: membership.joined, timeout):
                raise ReadyTimeout(f"node {self.node_id!r} has not joined: no seed answered within {timeout}s")

    def shutdown(self, timeout: float = 10.0) -> None:
        """Close every connection, stop the loop thread and the workers. Idempotent."""
        with self._state_lock:
            if self._state != "running":
                self._state = "stopped"
                return
            self._state = "stopped"
            _running_nodes.discard(self)
        if not self._loop_thread.in_loop_thread():
            try:
                self._loop_thread.run_coroutine(self._aclose(), timeout=timeout)
            except Exception:
                logger.exception("error while closing node %s", self.node_id)
        self._loop_thread.stop(timeout)
        logger.info("node %s shut down", self.node_id)

    async def _aclose(self) -> None:
        if self._membership is not None:
            await self._membership.leave(self.config.leave_timeout)
            self._membership.stop()
        self._messaging.close()
        if self._endpoint is not None:
            self._endpoint.close()
        # let the transport's close and connection_lost callbacks run
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    def _forked(self) -> None:
        self._state = "forked"
        self._loop_thread.abandon_after_fork()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- members ------------------------------------------------------------------
    def members(self) -> list[Member]:
        """Every current member, this node included. With gossip, ``meta`` lists the
        applications a member advertises under the key ``nodosum.apps``."""
        self._check_running()
        assert self._membership is not None
        return self._loop_thread.call(self._membership.members)

    def member_ids(self) -> list[str]:
        """Ids of every current member, this node included, sorted (no loop round trip)."""
        return list(self._member_ids)

    def add_peer(self, node_id: str, host: str, port: int) -> None:
        """Add a peer to the static member list at run time (membership='static')."""
        self._loop_thread.call(self._static_membership().add, Member(node_id, host, port))

    def remove_peer(self, node_id: str) -> None:
        """Remove a peer from the static member list (a "leave" event)."""
        self._loop_thread.call(self._static_membership().remove, node_id)

    def _static_membership(self) -> StaticMembership:
        self._check_running()
        if self._static is None:
            raise ConfigError("membership", "add_peer/remove_peer need membership='static'; use join() for gossip")
        return self._static

    def join(self, seeds: list[str]) -> None:
        """Join a cluster through seeds (as in NodeConfig.seeds); returns at once, see ready()."""
        addresses = [address for seed in seeds for address in parse_seed(seed, self._settings.ports)]
        self._check_running()
        assert self._membership is not None
        self._loop_thread.call(self._membership.join, addresses)

    def update_meta(self, meta: dict[str, Any]) -> None:
        """Replace this node's metadata (≤ 512 bytes as JSON, with the advertised applications);
        members see an update event."""
        if APPS_META_KEY in meta:
            raise ConfigError("meta", f"the key {APPS_META_KEY!r} is reserved (advertised applications)")
        self._check_running()
        with self._apps_lock:
            self._publish(dict(meta), self._advertised)

    def _full_meta(self) -> dict[str, Any]:
        meta = dict(self._meta)
        if self._advertised:
            meta[APPS_META_KEY] = sorted(self._advertised)
        return meta

    def _publish(self, meta: dict[str, Any], advertised: list[str]) -> None:
        """Make ``meta`` plus ``advertised`` this node's metadata (under the apps lock)."""
        assert self._membership is not None
        full = dict(meta)
        if advertised:
            full[APPS_META_KEY] = sorted(advertised)
        self._loop_thread.call(self._membership.update_meta, full)
        self._meta, self._advertised = meta, advertised
        self._loop_thread.call(self._reindex)

    def on_member_event(self, listener: MemberListener) -> None:
        """Call ``listener(event)`` on a worker thread for each join, leave, fail, update."""
        self._listeners.append(listener)

    def _member_event(self, event: MemberEvent) -> None:
        member = event.member
        if member.node_id != self.node_id:
            connections = self._messaging.connections
            if event.kind in (MemberEventKind.JOIN, MemberEventKind.UPDATE):
                connections.member_up(member.node_id, member.address)
            else:
                connections.member_down(member.node_id, f"node {member.node_id!r} {event.kind.value}")
        self._reindex()
        if self._listeners:
            # one ordered queue: listeners see a join before the leave that follows it
            self._events.put(self._call_listeners, event, self.node_id)

    def _reindex(self) -> None:
        """Refresh the member ids and which members run which application (loop thread)."""
        assert self._membership is not None
        members = self._membership.members()
        index: dict[str, list[str]] = {}
        for member in members:
            apps = member.meta.get(APPS_META_KEY)
            if isinstance(apps, list):
                for app_id in apps:
                    if isinstance(app_id, str):
                        index.setdefault(app_id, []).append(member.node_id)
        for ids in index.values():
            ids.sort()
        self._member_ids = tuple(sorted(m.node_id for m in members))
        self._app_index = index

    def _app_nodes(self, app_id: str) -> list[str]:
        membership = self._membership
        if membership is None or not membership.shares_metadata:
            return list(self._member_ids)
        return list(self._app_index.get(app_id, ()))

    def _call_listeners(self, event: MemberEvent, _sender: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                self.counters.inc("handler_errors")
                logger.exception("member event listener raised on %s", event)

    # -- applications ------------------------------------------------------------------
    def register_application(self, app_id: str, *, advertise: bool = True) -> Application:
        """Create the application ``app_id`` on this node (once per id); allowed before start.

        With gossip membership, ``advertise`` lists it in this node's metadata, so that
        the other nodes' ``Application.nodes()`` include this node (they see an update
        event); ``advertise=False`` lets this node send to an application without being
        one of its nodes."""
        if not isinstance(app_id, str) or not APP_ID_RE.match(app_id):
            raise ApplicationError(f"invalid application id {app_id!r}")
        if app_id.startswith("nodosum."):
            raise ApplicationError(f"application ids starting with 'nodosum.' are reserved ({app_id!r})")
        with self._apps_lock:
            if app_id in self._apps:
                raise ApplicationError(f"application {app_id!r} is already registered on {self.node_id!r}")
            if advertise:
                advertised = [*self._advertised, app_id]
                try:
                    encode_meta({**self._meta, APPS_META_KEY: sorted(advertised)}, self._settings.swim.max_meta_size)
                except ConfigError as exc:
                    raise ApplicationError(f"cannot advertise {app_id!r}: {exc}") from None
                if self._state == "running" and self._membership is not None and self._membership.shares_metadata:
                    self._publish(self._meta, advertised)
                else:
                    self._advertised = advertised
                    if self._state == "running":
                        self._loop_thread.call(self._reindex)
            app = self._apps[app_id] = Application(self._port, app_id)
        return app

    def application(self, app_id: str) -> Application:
        """The registered application ``app_id``."""
        try:
            return self._apps[app_id]
        except KeyError:
            raise ApplicationError(f"no application {app_id!r} registered on {self.node_id!r}") from None

    # HandlerSource, read by the transport on the loop thread
    def receive_handler(self, app_id: str, stream_name: str) -> ReceiveHandler | None:
        app = self._apps.get(app_id)
        return None if app is None else app.receive_handler(stream_name)

    def request_handler(self, app_id: str) -> tuple[RequestHandler, bool] | None:
        app = self._apps.get(app_id)
        if app is None or app.request_handler is None:
            return None
        return app.request_handler, app.request_handler_inline

    def has_application(self, app_id: str) -> bool:
        return app_id in self._apps

    # -- observability -------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counters since start, as a flat dict of ints (documented in README, "Node.stats()")."""
        stats = self.counters.snapshot()
        if self._state == "running":
            stats.update(self._loop_thread.call(self._loop_stats))
        stats["handshakes"] = stats.get("connections_verified", 0)
        return stats

    def _loop_stats(self) -> dict[str, int]:
        assert self._membership is not None
        return {**self._messaging.stats(), **self._membership.stats()}

    def _check_running(self) -> None:
        if self._state != "running":
            if self._state == "forked":
                raise NodeNotRunning(
                    f"node {self.node_id!r} was started before this process forked; start a new Node in the child"
                )
            raise NodeNotRunning(f"node {self.node_id!r} is {self._state}")
