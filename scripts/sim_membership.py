#!/usr/bin/env python3
"""Measure the SWIM membership on the deterministic simulator and print the figures.

For each cluster size: time to detect a killed node (first member to declare it
dead, and every member), convergence after N nodes join through one seed (by
push-pull, and by gossip only), and false deaths under 0 / 5 / 10 % packet loss
over a fixed simulated duration. Everything is seeded: the same arguments print
the same figures.

    python scripts/sim_membership.py            # N = 5, 20, 50, 100 (about a minute or two)
    python scripts/sim_membership.py --quick    # a short run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodosum.membership.base import MemberEventKind  # noqa: E402
from nodosum.membership.codec import NodeStatus  # noqa: E402
from nodosum.membership.config import SwimConfig  # noqa: E402
from nodosum.membership.simulation import Simulation, detection_bound  # noqa: E402
from nodosum.membership.suspicion import suspicion_timeout  # noqa: E402

DELAY, JITTER = 0.001, 0.004  # seconds per packet: fixed + uniform jitter


def stats(values: Sequence[float]) -> str:
    if not values:
        return "       -"
    return f"{min(values):6.2f} / {statistics.median(values):6.2f} / {max(values):6.2f}"


def converged_cluster(config: SwimConfig, n: int, seed: int, loss: float = 0.0) -> tuple[Simulation, list[str]]:
    sim = Simulation(config, seed=seed, delay=DELAY, jitter=JITTER)
    ids = sim.start_cluster(n)
    if sim.run_until_true(sim.converged, 60) is None:
        raise RuntimeError(f"{n} nodes did not converge (seed {seed})")
    sim.run(10)
    sim.set_loss(loss)
    return sim, ids


def kill_detection(config: SwimConfig, n: int, seed: int) -> tuple[float, float]:
    """Seconds from the kill to the first FAIL event, and to the last live member's FAIL event."""
    sim, ids = converged_cluster(config, n, seed)
    victim = ids[(7 * seed + 1) % n]
    killed = sim.now
    sim.kill(victim)

    def everywhere() -> bool:
        return all(sim.status(o, victim) in (NodeStatus.DEAD, None) for o in sim.live_ids())

    if sim.run_until_true(everywhere, 600, step=0.05) is None:
        raise RuntimeError(f"kill of {victim} not detected (n={n}, seed={seed})")
    fails = sim.events_about(victim, MemberEventKind.FAIL)
    return fails[0].time - killed, max(e.time for e in fails) - killed


def join_convergence(config: SwimConfig, n: int, seed: int, via: str) -> float:
    """Seconds until every node lists all n as alive, when n nodes join through one seed at t=0."""
    sim = Simulation(config, seed=seed, delay=DELAY, jitter=JITTER)
    sim.start_cluster(n, via=via)
    reached = sim.run_until_true(sim.converged, 300, step=0.01)
    if reached is None:
        raise RuntimeError(f"{n} nodes joining by {via} did not converge (seed {seed})")
    return reached


def false_deaths(config: SwimConfig, n: int, seed: int, loss: float, duration: float) -> tuple[int, int, float]:
    """FAIL events about live nodes, distinct victims, and packets sent per node per second."""
    sim, _ = converged_cluster(config, n, seed, loss)
    sent_before = sim.stats.sent
    start = sim.now
    sim.run(duration)
    fails = [e for e in sim.timeline if e.kind == MemberEventKind.FAIL and e.time >= start]
    rate = (sim.stats.sent - sent_before) / n / duration
    return len(fails), len({e.member for e in fails}), rate


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer sizes, seeds and a shorter loss run")
    parser.add_argument("--profile", default="lan", choices=["lan", "local"])
    parser.add_argument("--sizes", help="comma-separated cluster sizes (default 5,20,50,100)")
    parser.add_argument("--seeds", type=int, help="seeds per measurement (default 10, quick 2)")
    parser.add_argument("--duration", type=float, help="simulated seconds per loss run (default 600, quick 60)")
    args = parser.parse_args(argv)

    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([5, 20, 50] if args.quick else [5, 20, 50, 100])
    seeds = range(args.seeds or (2 if args.quick else 10))
    duration = args.duration or (60.0 if args.quick else 600.0)
    config = SwimConfig.profile(args.profile)
    losses = (0.0, 0.05, 0.10)
    started = time.perf_counter()

    print(f"SWIM membership on the simulator: profile {args.profile!r}, {len(seeds)} seeds, "
          f"packet delay {DELAY * 1000:g} ms + 0-{JITTER * 1000:g} ms jitter")  # fmt: skip
    print(f"probe {config.probe_interval:g}s/{config.probe_timeout:g}s, indirect {config.indirect_checks}, "
          f"suspicion x{config.suspicion_mult} (max x{config.suspicion_max_timeout_mult}), "
          f"retransmit x{config.retransmit_mult}, gossip {config.gossip_interval:g}s to {config.gossip_nodes}, "
          f"push-pull {config.push_pull_interval:g}s")  # fmt: skip
    print()
    print("Kill detection (seconds after the kill; min / median / max over seeds)")
    print(f"{'N':>5}  {'suspicion min..max':>18}  {'bound':>7}  {'first member declares dead':>26}  "
          f"{'all members declare dead':>26}")  # fmt: skip
    for n in sizes:
        low = suspicion_timeout(config.suspicion_mult, n, config.probe_interval)
        results = [kill_detection(config, n, seed) for seed in seeds]
        print(f"{n:>5}  {low:7.2f} .. {low * config.suspicion_max_timeout_mult:7.2f}  "
              f"{detection_bound(config, n):7.1f}  {stats([r[0] for r in results]):>26}  "
              f"{stats([r[1] for r in results]):>26}", flush=True)  # fmt: skip
    print()
    print("Convergence after N nodes join through one seed at t=0 (seconds until all see N alive)")
    print(f"{'N':>5}  {'push-pull join':>26}  {'gossip-only join (seed address)':>32}")
    for n in sizes:
        pp = [join_convergence(config, n, seed, "push_pull") for seed in seeds]
        gossip = [join_convergence(config, n, seed, "gossip") for seed in seeds]
        print(f"{n:>5}  {stats(pp):>26}  {stats(gossip):>32}", flush=True)
    print()
    print(f"False deaths over {duration:g} simulated seconds with no failures "
          f"(FAIL events about live nodes / distinct nodes; seed 0; packets per node per second)")  # fmt: skip
    header = "".join(f"{f'{loss:.0%} loss':>22}" for loss in losses)
    print(f"{'N':>5}{header}")
    for n in sizes:
        cells = []
        for loss in losses:
            events, nodes, rate = false_deaths(config, n, 0, loss, duration)
            cells.append(f"{events:>5} / {nodes:<3} {rate:6.1f} pkt/s")
        print(f"{n:>5}" + "".join(f"{c:>22}" for c in cells), flush=True)
    print()
    print(f"(wall time {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
