"""What a process counts of its own work, for whoever reports it: the disk service's NBD
requests and chunk store operations (latency by operation, bytes by direction), which
the node agent relays and the control plane's ``/metrics`` shows.

Plain counts, no exporter: the disk service has no HTTP server of its own for metrics,
and Prometheus's client would cost every NBD request more than these few additions
(an ``observe`` is a bisect and three increments). Totals only grow while the process
lives; a restart starts them at zero again, which Prometheus counters allow.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from dataclasses import dataclass, field

__all__ = ["BUCKETS", "CHUNK_STORE", "NBD", "ByteCount", "Meter", "MeterReport", "OpLatency"]

#: Upper bounds of the latency buckets, in seconds (the last bucket is everything above).
BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass(frozen=True, slots=True)
class OpLatency:
    """One operation's latency: how many fell in each bucket (``counts[i]`` those at most
    ``BUCKETS[i]`` and above the one before; the last, those above every bound), their
    sum in seconds, and how many."""

    op: str
    counts: list[int]
    sum: float
    count: int


@dataclass(frozen=True, slots=True)
class ByteCount:
    """Bytes moved in one direction (``read``/``write`` for NBD, ``up``/``down`` for the
    chunk store)."""

    direction: str
    bytes: int


@dataclass(frozen=True, slots=True)
class MeterReport:
    """A meter's totals at one moment."""

    latency: list[OpLatency] = field(default_factory=list)
    bytes: list[ByteCount] = field(default_factory=list)


class Meter:
    """Latency by operation and bytes by direction. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        self._bytes: dict[str, int] = {}

    def observe(
        self, op: str, seconds: float, direction: str = "", nbytes: int = 0, count: int = 1
    ) -> None:
        """``count`` ``op``s that took ``seconds`` each (and moved ``nbytes`` in
        ``direction`` together)."""
        at = bisect_left(BUCKETS, seconds)
        with self._lock:
            counts = self._counts.get(op)
            if counts is None:
                counts = self._counts[op] = [0] * (len(BUCKETS) + 1)
                self._sums[op] = 0.0
            counts[at] += count
            self._sums[op] += seconds * count
            if nbytes:
                self._bytes[direction] = self._bytes.get(direction, 0) + nbytes

    def moved(self, direction: str, nbytes: int) -> None:
        """``nbytes`` moved in ``direction``, apart from any one operation's timing."""
        with self._lock:
            self._bytes[direction] = self._bytes.get(direction, 0) + nbytes

    def report(self) -> MeterReport:
        """The totals now."""
        with self._lock:
            latency = [
                OpLatency(op, list(counts), self._sums[op], sum(counts))
                for op, counts in sorted(self._counts.items())
            ]
            moved = [ByteCount(d, n) for d, n in sorted(self._bytes.items())]
        return MeterReport(latency, moved)


#: This process's NBD requests (the disk service's server).
NBD = Meter()
#: This process's chunk store operations.
CHUNK_STORE = Meter()
