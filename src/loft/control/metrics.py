"""The control plane's Prometheus metrics, in a registry of their own (no process-wide
default registry: two apps in one process, as tests run them, never share counts).

The API side observes requests and workspace operations itself. The rest are hooks the
node and disk side feed once they report through the node API (its wake path, NBD
server, chunk store and committer): the names, labels and buckets are fixed here, so
dashboards can be written now. ``GET /metrics`` renders them (admin only).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["OPERATIONS", "PREVIEW_OUTCOMES", "Metrics"]

#: Workspace operations timed by ``loft_workspace_operation_seconds``.
OPERATIONS = ("create", "start", "stop", "delete", "snapshot", "restore", "fork", "exec")
#: How the preview proxy answered (``loft_preview_requests``'s ``outcome``).
PREVIEW_OUTCOMES = ("forwarded", "woke", "denied", "limited", "timeout", "failed", "bad")
#: Latency buckets (seconds) from a millisecond to two minutes.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """Every metric the control plane exports."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # --- observed by the API
        self.requests = Counter(
            "loft_api_requests", "API requests answered", ["method", "route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "loft_api_request_seconds",
            "Time to answer an API request (to its first byte for a stream)",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.operation_seconds = Histogram(
            "loft_workspace_operation_seconds",
            "Time a workspace operation took on its node",
            ["operation"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.operation_failures = Counter(
            "loft_workspace_operation_failures",
            "Workspace operations that failed (the node refused, or did not answer)",
            ["operation"],
            registry=r,
        )
        self.node_timeouts = Counter(
            "loft_node_timeouts", "Node calls that passed their deadline", registry=r
        )
        self.workspaces = Gauge(
            "loft_workspaces", "Workspaces by state, as of the last scrape", ["state"], registry=r
        )
        # --- sleep and wake (the reaper, the preview proxy, terminals)
        self.wake_seconds = Histogram(
            "loft_workspace_wake_to_first_byte_seconds",
            "From a request to a sleeping workspace to the first byte of its answer",
            buckets=_BUCKETS,
            registry=r,
        )
        self.wakes = Counter("loft_workspace_wakes", "Workspaces woken by a request", registry=r)
        self.wake_refusals = Counter(
            "loft_workspace_wake_refusals", "Wakes refused by a rate limit", registry=r
        )
        self.idle_stops = Counter(
            "loft_workspace_idle_stops", "Workspaces stopped for being idle", registry=r
        )
        self.active_workspaces = Gauge(
            "loft_workspaces_active",
            "Running workspaces used in the last minute, as of the reaper's last sweep",
            registry=r,
        )
        self.preview_requests = Counter(
            "loft_preview_requests",
            "Requests to the preview origin, by how they were answered",
            ["outcome"],
            registry=r,
        )
        self.terminals = Gauge(
            "loft_terminal_sessions", "Terminal sessions, attached or in their grace", registry=r
        )
        # --- hooks for the node and disk side
        self.nbd_request_seconds = Histogram(
            "loft_nbd_request_seconds", "NBD request latency", ["op"], buckets=_BUCKETS, registry=r
        )
        self.nbd_bytes = Counter(
            "loft_nbd_bytes", "Bytes NBD clients read and wrote", ["direction"], registry=r
        )
        self.chunk_store_seconds = Histogram(
            "loft_chunk_store_operation_seconds",
            "Chunk store operation latency",
            ["op"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.chunk_store_bytes = Counter(
            "loft_chunk_store_bytes",
            "Bytes moved to and from the chunk store",
            ["direction"],
            registry=r,
        )
        self.commit_lag = Gauge(
            "loft_commit_lag_seconds",
            "Age of the oldest flushed write not yet committed, per volume",
            ["volume"],
            registry=r,
        )

    @contextmanager
    def operation(self, name: str) -> Iterator[None]:
        """Time one workspace operation; a failure is counted as one too."""
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.operation_failures.labels(name).inc()
            raise
        finally:
            self.operation_seconds.labels(name).observe(time.perf_counter() - start)

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
