"""The PeerTable on a simulated network: a fake clock, no sockets, every run seeded.

Each simulated process runs one PeerTable and a small adapter that follows the table's
contract the way nodosum's transport does: it dials, verifies, closes and probes
simulated connections, answers CloseIfQuiet from its in-flight counts, calls ``stalled``
when a request goes unanswered, and sends requests from a random workload. The network
adds latency and loses handshakes; processes are killed (their connections go silent
until QUIC's idle timeout) and restarted on the same address. Every scenario runs over
100 seeds and checks:

* every waiter is run or failed by its deadline, exactly once;
* after quiescence (no more churn, traffic on), both sides of each pair of live
  processes have adopted the same connection, the one dialled by the smaller id when
  both dialled; any other connection between them is a retired duplicate that closes
  within its grace period; every request is answered;
* a restarted peer is reached again within seconds, long before QUIC's idle timeout;
* under churn (kills, restarts under new ids, false failures, a bound on open
  connections), what each table holds stays bounded.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from nodosum.transport.peers import Close, CloseIfQuiet, CloseReason, Dial, FailWaiters, PeerTable, Probe, Retire, RunWaiters

SEEDS = range(100)
CONNECT_TIMEOUT = 2.0
QUIC_IDLE = 20.0  # an end whose peer process is gone closes after this (no keep-alive answers)
PROBE_TIMEOUT = 1.0
REQUEST_TIMEOUT = 1.5
RETIRE_GRACE = 3.0
IDLE_TIMEOUT = 6.0


class End:
    """One side of a simulated QUIC connection: the handle a table sees."""

    __slots__ = ("link", "proc", "dialled", "verified", "closed", "reported", "in_flight", "retired_at")

    def __init__(self, link: Link, proc: Proc, dialled: bool) -> None:
        self.link = link
        self.proc = proc
        self.dialled = dialled
        self.verified = False
        self.closed = False
        self.reported = False  # the table has been told of it (dial_started or verified)
        self.in_flight = 0  # requests out, and requests in being answered
        self.retired_at: float | None = None

    @property
    def other(self) -> End:
        return self.link.accept if self is self.link.dial else self.link.dial

    def __repr__(self) -> str:
        return f"<End {self.proc.name} {'dialled' if self.dialled else 'accepted'} #{self.link.number}>"


class Link:
    """A simulated QUIC connection between two process incarnations."""

    numbers = itertools.count()

    def __init__(self, dialler: Proc, acceptor: Proc, now: float) -> None:
        self.number = next(self.numbers)
        self.created = now
        self.dial = End(self, dialler, True)
        self.accept = End(self, acceptor, False)

    @property
    def open(self) -> bool:
        return not (self.dial.closed or self.accept.closed)


class Waiter:
    __slots__ = ("proc", "deadline", "resolved")

    def __init__(self, proc: Proc, deadline: float) -> None:
        self.proc = proc
        self.deadline = deadline
        self.resolved: float | None = None


class Proc:
    """One process incarnation: its table, the adapter that drives it, its membership view."""

    def __init__(self, sim: Sim, node_id: str, generation: int, talks: bool = True) -> None:
        self.sim = sim
        self.node_id = node_id
        self.name = f"{node_id}#{generation}"
        self.up = True
        self.talks = talks  # sends requests of its own (otherwise it only answers)
        self.table = PeerTable(node_id, rng=random.Random(sim.rng.random()), idle_timeout=IDLE_TIMEOUT,
                               max_open=sim.max_open, reconnect_min=0.1, reconnect_max=1.0,
                               retire_grace=RETIRE_GRACE, max_waiters=1000)
        self.members: set[str] = set()
        self.answered: Counter[str] = Counter()
        self.unanswered: Counter[str] = Counter()
        self.timer_at: float | None = None

    def run(self, call: Callable[..., None], *args: Any) -> None:
        """Feed the table one input, then execute its actions (the adapter contract)."""
        if self.up:
            call(*args)
            self.execute()

    def execute(self) -> None:
        sim, table = self.sim, self.table
        actions = table.actions()
        while actions:
            for action in actions:
                sim.actions_seen[type(action).__name__] += 1
                if isinstance(action, Dial):
                    end = sim.dial(self, action.node_id)
                    end.reported = True
                    table.dial_started(action.node_id, end)
                elif isinstance(action, Close):
                    sim.close(action.conn)
                elif isinstance(action, CloseIfQuiet):
                    if action.conn.in_flight:
                        if action.reason is CloseReason.DUPLICATE:
                            action.conn.retired_at = sim.now  # a new grace period
                        table.busy(action.conn, sim.now)
                    else:
                        sim.close(action.conn)
                elif isinstance(action, Retire):
                    action.conn.retired_at = sim.now
                elif isinstance(action, Probe):
                    sim.probe(action.conn)
                elif isinstance(action, RunWaiters):
                    for waiter in action.waiters:
                        sim.resolve(waiter)
                        sim.request(action.conn)
                elif isinstance(action, FailWaiters):
                    for waiter in action.waiters:
                        sim.resolve(waiter)
            actions = table.actions()
        deadline = table.next_deadline()
        if deadline is not None and (self.timer_at is None or deadline < self.timer_at):
            self.timer_at = deadline
            sim.at(deadline, self.on_timer)

    def on_timer(self) -> None:
        self.timer_at = None
        self.run(self.table.tick, self.sim.now)

    def send(self, target: str) -> None:
        """The application sends a request to ``target``."""
        if not self.up or target not in self.members:
            return
        now = self.sim.now
        conn = self.table.connection(target, now)
        if conn is not None:
            self.sim.request(conn)
            return
        waiter = Waiter(self, now + REQUEST_TIMEOUT)
        self.sim.waiters.append(waiter)
        self.run(self.table.wait, target, waiter, waiter.deadline, now)


class Sim:
    def __init__(self, seed: int, n: int, *, handshake_loss: float = 0.0, max_open: int = 64) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.max_open = max_open
        self.handshake_loss = handshake_loss
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._names = itertools.count(n)
        self.addresses = {f"n{i}": ("10.0.0.1", 7000 + i) for i in range(n)}
        self.procs = {node_id: Proc(self, node_id, 0) for node_id in self.addresses}
        self.links: list[Link] = []
        self.waiters: list[Waiter] = []
        self.actions_seen: Counter[str] = Counter()
        for proc in self.procs.values():
            for other in self.procs:
                if other != proc.node_id:
                    self.member_up(proc, other)

    # -- the event queue -------------------------------------------------------------
    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._queue, (max(when, self.now), next(self._seq), fn, args))

    def after(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self.at(self.now + delay, fn, *args)

    def run_until(self, end: float) -> None:
        while self._queue and self._queue[0][0] <= end:
            when, _, fn, args = heapq.heappop(self._queue)
            self.now = when
            fn(*args)
        self.now = end
        self.links = [link for link in self.links if link.open]

    def latency(self) -> float:
        return 0.001 + 0.004 * self.rng.random()

    def live(self) -> list[Proc]:
        return [p for p in self.procs.values() if p.up]

    # -- processes and membership ----------------------------------------------------------
    def member_up(self, proc: Proc, node_id: str) -> None:
        if proc.up and node_id in self.procs:
            proc.members.add(node_id)
            proc.run(proc.table.member_up, node_id, self.addresses[node_id], self.now)

    def member_down(self, proc: Proc, node_id: str) -> None:
        if proc.up:
            proc.members.discard(node_id)
            proc.run(proc.table.member_down, node_id, f"node {node_id!r} failed", self.now)

    def kill(self, node_id: str) -> None:
        """SIGKILL: the process vanishes without a word; the ends of its connections at the
        other processes close only when QUIC's idle timeout runs out."""
        proc = self.procs[node_id]
        proc.up = False
        for link in self.links:
            for end in (link.dial, link.accept):
                if end.other.proc is proc and not end.closed:
                    self.after(QUIC_IDLE, self._peer_closed, end)

    def restart(self, node_id: str, *, talks: bool = True) -> Proc:
        """A new process with the same id on the same address."""
        generation = int(self.procs[node_id].name.rpartition("#")[2]) + 1
        proc = self.procs[node_id] = Proc(self, node_id, generation, talks)
        for other in self.procs:
            if other != node_id and self.procs[other].up:
                self.member_up(proc, other)
        return proc

    def replace(self, node_id: str) -> None:
        """The process is gone for good (its members learn it failed); a new one with a new id
        and a new address joins, as a pod replaced by an orchestrator does."""
        self.kill(node_id)
        for proc in self.live():
            self.after(1.0 + self.rng.random(), self.member_down, proc, node_id)
        new_id = f"n{next(self._names)}"
        self.after(2.5, self._join, node_id, new_id)

    def _join(self, old_id: str, new_id: str) -> None:
        del self.procs[old_id]
        del self.addresses[old_id]
        self.addresses[new_id] = ("10.0.0.1", 7000 + int(new_id[1:]))
        proc = self.procs[new_id] = Proc(self, new_id, 0)
        for other in self.procs:
            if other != new_id and self.procs[other].up:
                self.member_up(proc, other)
                self.after(0.1 + 0.2 * self.rng.random(), self.member_up, self.procs[other], new_id)

    # -- connections -----------------------------------------------------------------------
    def dial(self, proc: Proc, target: str) -> End:
        acceptor = self.procs[target]
        link = Link(proc, acceptor, self.now)
        self.links.append(link)
        if not acceptor.up or self.rng.random() < self.handshake_loss:
            self.after(CONNECT_TIMEOUT, self.handshake_timeout, link.dial)
        elif self.rng.random() < 0.05:  # the server's handshake completes, the client's never does
            self.after(2 * self.latency(), self.verified, link.accept)
            self.after(CONNECT_TIMEOUT, self.handshake_timeout, link.dial)
        else:  # each side completes after its own flight; either may be first
            self.after(2 * self.latency(), self.verified, link.dial)
            self.after(2 * self.latency(), self.verified, link.accept)
        return link.dial

    def verified(self, end: End) -> None:
        if end.closed or not self.alive(end):
            return
        end.verified = end.reported = True
        peer = end.other.proc.node_id
        end.proc.run(end.proc.table.connection_verified, end, peer, end.dialled, self.addresses[peer], self.now)

    def handshake_timeout(self, end: End) -> None:
        if not end.closed and not end.verified:
            self.close(end)

    def alive(self, end: End) -> bool:
        return end.proc.up and self.procs.get(end.proc.node_id) is end.proc

    def close(self, end: End) -> None:
        """Close one end now; the other end hears of it a little later (if its process lives)."""
        if end.closed:
            return
        end.closed = True
        end.in_flight = 0
        if end.reported and self.alive(end):
            end.proc.run(end.proc.table.connection_closed, end, self.now, "closed")
        self.after(self.latency(), self._peer_closed, end.other)

    def _peer_closed(self, end: End) -> None:
        if self.alive(end):
            self.close(end)

    def probe(self, end: End) -> None:
        answered = self.alive(end.other) and not end.other.closed
        self.after(2 * self.latency() if answered else PROBE_TIMEOUT, self._probe_done, end, answered)

    def _probe_done(self, end: End, answered: bool) -> None:
        if self.alive(end):
            end.proc.run(end.proc.table.probe_result, end, answered and not end.closed, self.now)

    # -- requests ------------------------------------------------------------------------
    def request(self, end: End) -> None:
        if end.closed:
            return
        end.in_flight += 1
        self.after(self.latency(), self._request_arrives, end, end.other)

    def _request_arrives(self, end: End, remote: End) -> None:
        if remote.closed or not self.alive(remote):
            self.after(REQUEST_TIMEOUT, self._request_timed_out, end)
            return
        remote.proc.run(remote.proc.table.used, end.proc.node_id, self.now)
        remote.in_flight += 1
        self.after(0.001, self._respond, end, remote)

    def _respond(self, end: End, remote: End) -> None:
        if not remote.closed:
            remote.in_flight -= 1
            self.after(self.latency(), self._response_arrives, end)

    def _response_arrives(self, end: End) -> None:
        if not end.closed and end.in_flight:
            end.in_flight -= 1
            end.proc.answered[end.other.proc.node_id] += 1

    def _request_timed_out(self, end: End) -> None:
        if end.closed or not end.in_flight:
            return
        end.in_flight -= 1
        peer = end.other.proc.node_id
        end.proc.unanswered[peer] += 1
        if self.alive(end):
            end.proc.run(end.proc.table.stalled, peer, self.now)

    def resolve(self, waiter: Waiter) -> None:
        assert waiter.resolved is None, "a waiter was resolved twice"
        assert self.now <= waiter.deadline + 1e-9, f"waiter resolved {self.now - waiter.deadline:.3f}s late"
        waiter.resolved = self.now

    # -- workload --------------------------------------------------------------------------
    def traffic(self, until: float, rate: float = 4.0, burst: float = 0.0) -> None:
        """Processes that talk send to random members at ``rate`` per second each; with
        ``burst``, sometimes two processes pick each other at nearly the same moment."""

        def step() -> None:
            if self.now >= until:
                return
            talkers = [p for p in self.live() if p.talks]
            if burst and self.rng.random() < burst and len(talkers) >= 2:
                a, b = self.rng.sample(talkers, 2)
                a.send(b.node_id)
                self.after(self.rng.random() * 0.002, b.send, a.node_id)
            elif talkers:
                proc = self.rng.choice(talkers)
                if proc.members:
                    proc.send(self.rng.choice(sorted(proc.members)))
            self.after(self.rng.expovariate(rate * max(1, len(talkers))), step)

        step()

    def reset_counts(self) -> None:
        for proc in self.procs.values():
            proc.answered.clear()
            proc.unanswered.clear()

    # -- invariants ------------------------------------------------------------------------
    def check_waiters(self) -> None:
        late = [w for w in self.waiters if w.resolved is None and w.deadline < self.now and w.proc.up]
        assert not late, f"{len(late)} waiters left hanging past their deadline"

    def check_connections(self) -> None:
        """Both sides of each live pair adopted the same connection (or neither did), the one
        the rule keeps; any other open connection between them is retiring within its grace.

        A connection still in its handshake, or whose close is on its way, is not judged yet
        (traffic goes on, and with a bound on open connections they come and go)."""

        def settled(link: Link) -> bool:
            handshaken = link.dial.verified and link.accept.verified
            return handshaken or self.now - link.created > CONNECT_TIMEOUT + 0.1

        def judged(end: End | None) -> bool:
            return end is None or settled(end.link) and not end.other.closed

        live = self.live()
        for a in live:
            for b in live:
                if a.node_id >= b.node_id:
                    continue
                ea, eb = a.table.adopted(b.node_id), b.table.adopted(a.node_id)
                if not (judged(ea) and judged(eb)):
                    continue
                if ea is not None or eb is not None:
                    assert ea is not None and eb is not None and ea.link is eb.link, \
                        f"{a.name} uses {ea}, {b.name} uses {eb}"
                others = [link for link in self.links if link.open and settled(link)
                          and {link.dial.proc, link.accept.proc} == {a, b} and (ea is None or link is not ea.link)]
                for link in others:
                    retired = [e.retired_at for e in (link.dial, link.accept) if e.retired_at is not None]
                    assert retired, f"{a.name}-{b.name}: connection #{link.number} open, unused, not retired"
                    if ea is not None and link.dial.proc.node_id == a.node_id < b.node_id:
                        assert ea.link.dial.proc is a, f"{a.name}-{b.name}: kept the larger id's dial"

    def check_retired(self) -> None:
        """A retired connection closes once its grace period is over (later only while requests
        are in flight on it, which extends the grace)."""
        for link in self.links:
            for end in (link.dial, link.accept):
                if (link.open and end.retired_at is not None and self.alive(end)
                        and end.proc.table.adopted(end.other.proc.node_id) is not end):
                    assert self.now - end.retired_at <= RETIRE_GRACE + 0.01, \
                        f"{end} retired {self.now - end.retired_at:.2f}s ago and still open"

    def watch(self, until: float, interval: float = 0.25) -> None:
        """Check the invariants that hold at any moment, every ``interval`` seconds."""
        self.check_waiters()
        self.check_retired()
        if self.now + interval < until:
            self.after(interval, self.watch, until, interval)

    def check_quiescent(self, start: float) -> None:
        """No more churn: traffic for a while (retire grace, probes and QUIC idle timeouts all
        run out), then every request must be answered and the connections checked."""
        self.traffic(until=start + QUIC_IDLE + 10.0)
        self.watch(until=start + QUIC_IDLE + 10.0)
        self.run_until(start + QUIC_IDLE + 5.0)
        self.reset_counts()
        for t in range(5):
            self.run_until(start + QUIC_IDLE + 5.0 + t + self.rng.random())
            self.check_connections()
        self.check_waiters()
        answered = sum(sum(p.answered.values()) for p in self.procs.values())
        unanswered = sum(sum(p.unanswered.values()) for p in self.procs.values())
        assert answered > 0 and unanswered == 0, (answered, unanswered)


@pytest.mark.parametrize("seed", SEEDS)
def test_dial_races(seed: int) -> None:
    sim = Sim(seed, 4, handshake_loss=0.1)
    sim.traffic(until=20.0, rate=3.0, burst=0.5)
    sim.watch(until=20.0)
    sim.run_until(20.0)
    sim.check_waiters()
    sim.check_quiescent(20.0)
    assert sim.actions_seen["Retire"] > 0 or seed % 10  # races do make duplicates (most seeds)


@pytest.mark.parametrize("seed", SEEDS)
def test_simultaneous_dials(seed: int) -> None:
    # both sides want each other at the same instant, again and again (each time after the
    # idle timeout closed the connection, so both dial afresh)
    sim = Sim(seed, 2)
    a, b = sim.procs["n0"], sim.procs["n1"]
    for round_ in range(4):
        t = round_ * (IDLE_TIMEOUT + 2.0) + sim.rng.random()
        sim.at(t, a.send, "n1")
        sim.at(t + sim.rng.choice([0.0, 0.0, 0.0005, 0.002]), b.send, "n0")
    sim.run_until(4 * (IDLE_TIMEOUT + 2.0))
    sim.check_waiters()
    assert a.table.counters["dials"] == 4 and b.table.counters["dials"] >= 1
    assert a.table.counters["connections_idle_closed"] + b.table.counters["connections_idle_closed"] >= 1
    sim.check_quiescent(sim.now)


@pytest.mark.parametrize("seed", SEEDS)
def test_peer_killed_and_restarted_on_the_same_address(seed: int) -> None:
    # The restarted process only answers: nothing it sends tells the others that their
    # connection now leads nowhere. Unanswered requests must (probe, close, redial).
    sim = Sim(seed, 3)
    sim.traffic(until=5.0)
    sim.run_until(5.0)
    victim = sim.rng.choice(sorted(sim.procs))
    sim.kill(victim)
    noticed = sim.rng.random() < 0.5
    if not noticed:  # restarted at once, before anyone noticed: no member events
        sim.after(0.05, lambda: sim.restart(victim, talks=False))
    else:  # noticed first: it fails, then joins again
        for proc in sim.live():
            sim.after(1.0 + sim.rng.random(), sim.member_down, proc, victim)
            sim.after(3.2 + 0.3 * sim.rng.random(), sim.member_up, proc, victim)
        sim.after(3.0, lambda: sim.restart(victim, talks=False))
    sim.traffic(until=40.0)
    sim.watch(until=40.0)
    sim.run_until(5.0 + 3.5 + REQUEST_TIMEOUT + PROBE_TIMEOUT + 1.0)
    sim.check_waiters()
    sim.reset_counts()
    sim.run_until(sim.now + 3.0)  # reached again within seconds, though QUIC idles out after 20 s
    for proc in sim.live():
        if proc.node_id != victim:
            assert proc.unanswered[victim] == 0 and proc.answered[victim] > 0, (proc.name, proc.unanswered)
    sim.check_quiescent(sim.now)
    for proc in sim.live():  # what is used leads to the new process
        conn = proc.table.adopted(victim)
        assert conn is None or conn.other.proc is sim.procs[victim]


@pytest.mark.parametrize("seed", SEEDS)
def test_flapping_members(seed: int) -> None:
    # false failure reports and rejoins, while traffic flows both ways
    sim = Sim(seed, 4)
    sim.traffic(until=20.0, rate=4.0, burst=0.3)

    def flap() -> None:
        if sim.now > 18.0:
            return
        observer, subject = sim.rng.sample(sorted(sim.procs), 2)
        sim.member_down(sim.procs[observer], subject)
        sim.after(sim.rng.random() * 0.5, sim.member_up, sim.procs[observer], subject)
        sim.after(sim.rng.expovariate(2.0), flap)

    sim.after(1.0, flap)
    sim.watch(until=20.0)
    sim.run_until(20.0)
    sim.check_waiters()
    assert sim.actions_seen["Close"] > 0
    sim.check_quiescent(20.0)


@pytest.mark.parametrize("seed", range(3))
def test_churn_keeps_the_tables_bounded(seed: int) -> None:
    # five simulated minutes of kills, restarts, replacements under new ids and false
    # failures, with a bound of three open connections per process
    sim = Sim(seed, 6, handshake_loss=0.05, max_open=3)
    sim.traffic(until=300.0, rate=3.0, burst=0.3)
    sizes: Counter[str] = Counter()

    def churn() -> None:
        if sim.now > 290.0:
            return
        victim = sim.rng.choice(sorted(p.node_id for p in sim.live()))
        roll = sim.rng.random()
        if roll < 0.3:
            sim.kill(victim)
            sim.after(sim.rng.random() * 2, sim.restart, victim)
        elif roll < 0.5:
            sim.replace(victim)
        else:
            observer = sim.procs[sim.rng.choice(sorted(set(sim.procs) - {victim}))]
            sim.member_down(observer, victim)
            sim.after(sim.rng.random(), sim.member_up, observer, victim)
        for proc in sim.procs.values():
            for name, value in zip(("peers", "conns", "timers"), proc.table.size(), strict=True):
                sizes[name] = max(sizes[name], value)
        sim.after(sim.rng.expovariate(0.5), churn)

    sim.after(1.0, churn)
    sim.watch(until=300.0, interval=1.0)
    sim.run_until(300.0)
    sim.check_waiters()
    assert sim.actions_seen.keys() >= {"Dial", "Close", "CloseIfQuiet", "Retire", "Probe", "RunWaiters",
                                       "FailWaiters"}
    assert max(int(i[1:]) for i in sim.procs) > 20  # many ids came and went
    assert sizes["peers"] <= 8 and sizes["conns"] <= 16 and sizes["timers"] <= 40, sizes
    sim.check_quiescent(300.0)
    assert all(p.table.open_connections <= 3 for p in sim.procs.values())
