"""SWIM on the deterministic simulator: detection, loss, partitions, restarts, leave, metadata.

Every run is seeded: same seed, same timeline (test_simulation_is_deterministic).
Network: 1 ms + up to 4 ms jitter per packet unless a test says otherwise.
"""

from __future__ import annotations

import statistics

import pytest

from nodosum.membership.base import MemberEventKind
from nodosum.membership.codec import NodeStatus
from nodosum.membership.config import SwimConfig
from nodosum.membership.simulation import Simulation, detection_bound
from nodosum.membership.suspicion import suspicion_timeout

N = 50
LAN = SwimConfig.profile("lan")
PI = LAN.probe_interval
MIN_SUSPICION = suspicion_timeout(LAN.suspicion_mult, N, PI)  # 6.792 s for 50 nodes
MAX_SUSPICION = LAN.suspicion_max_timeout_mult * MIN_SUSPICION  # 40.752 s
FAIL, LEAVE, JOIN, UPDATE = MemberEventKind.FAIL, MemberEventKind.LEAVE, MemberEventKind.JOIN, MemberEventKind.UPDATE


def cluster(seed: int, n: int = N, config: SwimConfig = LAN, **net: object) -> tuple[Simulation, list[str]]:
    """A converged cluster of ``n`` nodes (all joined through the first by push-pull), 10 s old."""
    net.setdefault("delay", 0.001)
    net.setdefault("jitter", 0.004)
    sim = Simulation(config, seed=seed, **net)  # type: ignore[arg-type]
    ids = sim.start_cluster(n)
    assert sim.run_until_true(sim.converged, 30) is not None
    sim.run(10)
    return sim, ids


def dead_everywhere(sim: Simulation, victim: str) -> bool:
    return all(sim.status(o, victim) in (NodeStatus.DEAD, None) for o in sim.live_ids())


def kill_and_measure(seed: int) -> tuple[float, float, Simulation, str]:
    sim, ids = cluster(seed)
    victim = ids[(7 * seed + 3) % N]
    killed_at = sim.now
    sim.kill(victim)
    assert sim.run_until_true(lambda: dead_everywhere(sim, victim), 200, step=0.05) is not None
    fails = sim.events_about(victim, FAIL)
    assert sorted(e.observer for e in fails) == sorted(sim.live_ids())  # each live node, exactly once
    assert not sim.events_about(victim, LEAVE)
    return fails[0].time - killed_at, max(e.time for e in fails) - killed_at, sim, victim


def test_killed_node_is_declared_dead_by_every_member_within_the_bound() -> None:
    bound = detection_bound(LAN, N)  # (2(N-1) + 1 + checks) * PI + MAX_SUSPICION = 141.752 s
    assert bound == pytest.approx((2 * (N - 1) + 1 + LAN.suspicion_checks) * PI + MAX_SUSPICION)
    firsts, lasts = [], []
    for seed in range(3):
        first, last, sim, _ = kill_and_measure(seed)
        assert MIN_SUSPICION <= first <= last <= bound
        firsts.append(first)
        lasts.append(last)
        assert sim.dropped_packets() == 0
    # What Lifeguard buys in practice: confirmations from independent probers pull the
    # timer from its maximum (40.8 s) to about the minimum (6.8 s) plus a probe or two.
    assert statistics.median(lasts) <= MIN_SUSPICION + 5 * PI < MAX_SUSPICION


def test_no_live_node_declared_dead_with_10_percent_loss_for_10_minutes() -> None:
    sim, ids = cluster(seed=11)
    sim.set_loss(0.10)
    start = sim.now
    sim.run(600)
    assert [e for e in sim.timeline if e.kind == FAIL] == []
    assert sim.stats.lost > 0.09 * sim.stats.sent
    swims = [sim.nodes[i].swim for i in ids]
    assert sum(s.stats["suspects_raised"] for s in swims) > 0  # the loss did cause suspicions...
    assert sum(s.stats["refutes"] for s in swims) > 0  # ...which were refuted in time
    assert sim.converged(strict=False)
    assert sim.now - start == pytest.approx(600)


def test_partitioned_minority_is_suspected_then_rejoins_after_heal() -> None:
    sim, ids = cluster(seed=5)
    minority, majority = ids[-5:], ids[:-5]
    cut_at = sim.now
    sim.partition(minority)
    suspected = sim.run_until_true(
        lambda: all(sim.status(o, m) != NodeStatus.ALIVE for o in majority for m in minority), 60, step=0.1
    )
    assert suspected is not None and suspected - cut_at <= detection_bound(LAN, N)
    sim.run_until(cut_at + 90)  # long enough to be declared dead (and reaped) on both sides
    assert all(sim.status(majority[0], m) in (NodeStatus.DEAD, None) for m in minority)
    assert all(e.observer in minority for e in sim.timeline if e.kind == FAIL and e.member in majority)
    assert all(e.member in minority for e in sim.timeline if e.kind == FAIL and e.observer in majority)
    healed_at = sim.now
    sim.heal()
    # Failed members are retried by push-pull every reconnect_interval; then gossip merges the rest.
    converged = sim.run_until_true(sim.converged, 2 * LAN.reconnect_interval + 30)
    assert converged is not None, "all nodes should see all 50 alive again"
    assert converged - healed_at <= 2 * LAN.reconnect_interval
    rejoins = {e.member for e in sim.timeline if e.kind == JOIN and e.time >= healed_at and e.observer in majority}
    assert set(minority) <= rejoins


@pytest.mark.parametrize("via", ["push_pull", "gossip"])
@pytest.mark.parametrize("when", ["after_detection", "before_detection"])
def test_restart_with_same_id_rejoins_with_higher_incarnation(via: str, when: str) -> None:
    sim, ids = cluster(seed=21)
    victim = ids[13]
    old = {o: sim.nodes[o].swim.state_of(victim).incarnation for o in ids}  # type: ignore[union-attr]
    assert set(old.values()) == {0}
    sim.kill(victim)
    if when == "after_detection":
        assert sim.run_until_true(lambda: dead_everywhere(sim, victim), 200) is not None
    else:
        sim.run(0.5)
    restarted_at = sim.now
    # Worst case: incarnation 0 again (no clock-derived one). Before detection the peers
    # still hold it alive at incarnation 0, so give the new process a boot id in its
    # metadata: otherwise nothing differs and nothing needs outranking.
    meta = {"boot": 2} if when == "before_detection" else None
    sim.restart(victim, seed=ids[0], via=via, incarnation=0, meta=meta)

    def rejoined() -> bool:
        own = sim.nodes[victim].swim.incarnation
        seen = {sim.nodes[o].swim.state_of(victim).incarnation for o in ids}  # type: ignore[union-attr]
        return sim.converged() and seen == {own}

    assert sim.run_until_true(rejoined, 30) is not None
    assert sim.nodes[victim].swim.incarnation > max(old.values())
    assert len(sim.members_of(victim)) == N  # the restarted node knows everyone again
    others = set(ids) - {victim}
    if when == "after_detection":
        assert {e.observer for e in sim.events_about(victim, JOIN, since=restarted_at)} == others
    else:
        assert {e.observer for e in sim.events_about(victim, UPDATE, since=restarted_at)} == others
        states = [sim.nodes[o].swim.state_of(victim) for o in others]
        assert all(s is not None and s.member.meta == {"boot": 2} for s in states)
    assert not sim.events_about(victim, FAIL, since=restarted_at)


def test_restart_rejoins_by_gossip_alone() -> None:
    """No push-pull at all (disabled): the rejoin rides on gossip, refutation and greetings only.

    Greetings (``greet_new_members``) are what a gossip-only deployment turns on: without
    push-pull, the restarted node would otherwise learn the others one probe at a time.
    """
    config = SwimConfig.profile("lan", push_pull_interval=0, reconnect_interval=0, greet_new_members=True)
    sim, ids = cluster(seed=8, n=30, config=config)
    victim = ids[4]
    sim.kill(victim)
    assert sim.run_until_true(lambda: dead_everywhere(sim, victim), 200) is not None
    sim.restart(victim, seed=ids[0], via="gossip")
    assert sim.run_until_true(sim.converged, 30) is not None
    assert sim.stats.push_pulls == 29  # only the initial joins
    assert sim.nodes[victim].swim.incarnation >= 1


def test_restart_after_reaping_is_a_plain_join() -> None:
    sim, ids = cluster(seed=9, n=20)
    victim = ids[2]
    sim.kill(victim)
    assert sim.run_until_true(lambda: dead_everywhere(sim, victim), 200) is not None
    sim.run(LAN.gossip_to_the_dead_time + 30)
    assert all(sim.status(o, victim) is None for o in sim.live_ids())  # forgotten
    sim.restart(victim, seed=ids[0])
    assert sim.run_until_true(sim.converged, 10) is not None


def test_graceful_leave_is_reported_as_leave_not_fail() -> None:
    sim, ids = cluster(seed=3)
    leaver = ids[17]
    left_at = sim.now
    sim.leave(leaver)
    assert sim.run_until_true(lambda: not sim.nodes[leaver].up, 10) is not None  # announced, then stopped
    sim.run(120)  # well past any suspicion timeout
    events = sim.events_about(leaver, since=left_at)
    assert {e.kind for e in events} == {LEAVE}
    assert sorted(e.observer for e in events) == sorted(set(ids) - {leaver})
    assert sim.converged(set(ids) - {leaver})


def test_metadata_update_propagates_as_update() -> None:
    sim, ids = cluster(seed=4)
    changed_at = sim.now
    sim.update_meta(ids[9], {"zone": "eu-2", "weight": 3})
    def everyone_knows() -> bool:
        states = [sim.nodes[o].swim.state_of(ids[9]) for o in ids]
        return all(s is not None and s.member.meta == {"zone": "eu-2", "weight": 3} for s in states)

    done = sim.run_until_true(everyone_knows, 10, step=0.05)
    assert done is not None and done - changed_at < 2.0
    updates = sim.events_about(ids[9], UPDATE, since=changed_at)
    assert sorted(e.observer for e in updates) == sorted(set(ids) - {ids[9]})
    assert not sim.events_about(ids[9], JOIN, since=changed_at)


def test_gossip_only_join_through_one_seed_address() -> None:
    sim = Simulation(LAN, seed=12, delay=0.001, jitter=0.004)
    sim.start_cluster(N, via="gossip")
    assert sim.run_until_true(sim.converged, 30) is not None


def test_encrypted_cluster_with_label_and_key_rotation() -> None:
    old_key, new_key = b"o" * 32, b"n" * 32
    sim, ids = cluster(seed=6, n=20, keys=[old_key], label=b"prod")
    rings = [sim.nodes[i].swim._keyring for i in ids]
    for ring in rings:  # rotate at run time, as an operator would: add, switch, remove
        ring.add(new_key)  # type: ignore[union-attr]
    sim.run(2)
    for ring in rings:
        ring.use(new_key)  # type: ignore[union-attr]
    sim.run(2)
    for ring in rings:
        ring.remove(old_key)  # type: ignore[union-attr]
    sim.run(5)
    assert sim.converged() and sim.dropped_packets() == 0
    victim = ids[5]
    sim.kill(victim)
    assert sim.run_until_true(lambda: dead_everywhere(sim, victim), detection_bound(LAN, 20)) is not None
    assert sim.dropped_packets() == 0


def test_simulation_is_deterministic() -> None:
    def run() -> tuple[object, ...]:
        sim, ids = cluster(seed=42, n=20)
        sim.set_loss(0.05)
        sim.kill(ids[3])
        sim.run(60)
        return (tuple(sim.timeline), sim.stats.sent, sim.stats.lost, tuple(sim.nodes[ids[0]].swim.stats.items()))

    assert run() == run()


@pytest.mark.slow
def test_slow_100_nodes_10_percent_loss_and_detection_over_seeds() -> None:
    sim, _ = cluster(seed=100, n=100)
    sim.set_loss(0.10)
    sim.run(600)
    assert [e for e in sim.timeline if e.kind == FAIL] == []
    lasts = [kill_and_measure(seed)[1] for seed in range(10)]
    assert max(lasts) <= detection_bound(LAN, N)
