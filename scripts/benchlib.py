"""Shared pieces of the benchmark scripts: a scenario's figures, pooling rounds, formatting."""

from __future__ import annotations


def uvloop_version() -> str | None:
    try:
        import uvloop
    except ImportError:
        return None
    return getattr(uvloop, "__version__", "?")


class Result:
    """One scenario's figures: operations, wall time, latencies (ns, per call), client and server CPU s."""

    def __init__(self, name: str, count: int, elapsed: float, latencies_ns: list[int] | None = None,
                 cpu: float | None = None, server_cpu: float | None = None, per_call: int = 1) -> None:
        self.name, self.count, self.elapsed = name, count, elapsed
        self.cpu, self.server_cpu, self.per_call = cpu, server_cpu, per_call
        self.lat = sorted(latencies_ns or [])
        self.per_round = [self.rate]  # the rate of each round, once merged

    @property
    def rate(self) -> float:
        """Operations (requests, single gets, or keys for a batch row) per second."""
        return self.count / self.elapsed

    def pct_us(self, q: float) -> float | None:
        return self.lat[min(len(self.lat) - 1, int(q * len(self.lat)))] / 1000 if self.lat else None

    def per_op_us(self, cpu: float | None) -> float | None:
        return None if cpu is None else cpu / self.count * 1e6


def merge(rounds: list[Result]) -> Result:
    """Pool the rounds of one scenario: total count over total time, all latencies, summed CPU."""
    def total(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]

    out = Result(rounds[0].name, sum(r.count for r in rounds), sum(r.elapsed for r in rounds),
                 [x for r in rounds for x in r.lat], total([r.cpu for r in rounds]),
                 total([r.server_cpu for r in rounds]), rounds[0].per_call)
    out.per_round = [r.rate for r in rounds]
    return out


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)
