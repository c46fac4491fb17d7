"""A lane: one connection's large WRITEs, run one after another on a worker thread, their
results handed back to the event loop in batches.

``run_in_executor`` per WRITE costs more than the thread it borrows. Each hand-off goes
through a concurrent future and an asyncio future: ~10 µs of Python on the worker, under
the GIL, while the event loop waits for it (futex waits of the loop thread). And a pool
of idle threads wakes one of them for every job. Measured on 1 MiB sequential writes at
depth 8 (loft's file server, fio, alternating with nbdkit, four pairs): 10.0-15.7 futex
calls and 8.3-13.2 context switches per MiB against nbdkit's 1.7-2.1 and 5.7-6.3, at
0.86-1.04 of its MB/s. Through a lane (three pairs): 5.2-6.1 futex calls and 6.8-8.0
switches, at 1.26-1.31 of nbdkit.

A lane keeps one thread busy for as long as writes keep coming, so there is no wake-up per
job. It wakes the loop once for each batch of results rather than once per result. The
thread is borrowed from the server's pool and given back after :data:`LANE_BATCH` jobs,
so that a client that never stops writing cannot hold a worker from the others. A lane
does not order requests itself: the connection starts only requests that may run
together.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

#: jobs a lane runs before it gives its thread back to the pool: the pool is first in,
#: first out, so jobs of other connections queued meanwhile run before the lane goes on
LANE_BATCH = 16

#: how long a lane keeps its thread waiting for the next job before giving it back: at
#: depth 8 the next 1 MiB WRITE arrives within ~0.4 ms, and a thread taken from the pool
#: again costs its wake-up plus the pool's own bookkeeping
LANE_LINGER = 0.002

#: called on the event loop with a job's result, or with the exception it raised
Done = Callable[[Any, BaseException | None], None]


class Lane:
    """Jobs of one connection, run in order on one borrowed worker thread at a time."""

    __slots__ = ("_executor", "_jobs", "_lock", "_loop", "_notified", "_results", "_running")

    def __init__(self, loop: asyncio.AbstractEventLoop, executor: Executor) -> None:
        self._loop = loop
        self._executor = executor
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Done]] = queue.SimpleQueue()
        self._results: deque[tuple[Done, Any, BaseException | None]] = deque()
        #: a worker is taking jobs (or waiting for the next one): a new job needs no
        #: thread of its own
        self._running = False
        #: the loop has been asked to deliver the results (one wake-up per batch)
        self._notified = False

    def submit(self, job: Callable[[], Any], done: Done) -> None:
        """Run ``job()`` after this lane's earlier jobs; ``done(result, exc)`` is then
        called on the event loop. Raises as ``Executor.submit`` does when the pool is
        shut down (the job is not run then)."""
        self._jobs.put((job, done))
        with self._lock:
            if self._running:
                return
            self._running = True
        try:
            self._executor.submit(self._run)
        except BaseException:
            with self._lock:
                self._running = False
                self._jobs.get_nowait()
            raise

    def _run(self) -> None:
        while True:
            for _ in range(LANE_BATCH):
                if not self._run_one():
                    return
            try:
                self._executor.submit(self._run)  # to the back of the pool's queue
                return
            except RuntimeError:  # the pool is shutting down: finish here
                continue

    def _run_one(self) -> bool:
        """Run the next job; False when none came within LANE_LINGER (the thread goes
        back to the pool)."""
        try:
            job, done = self._jobs.get(timeout=LANE_LINGER)
        except queue.Empty:
            with self._lock:  # a job put before this check is ours; one after starts a run
                if self._jobs.empty():
                    self._running = False
                    return False
            job, done = self._jobs.get_nowait()
        try:
            result, exc = job(), None
        except BaseException as e:  # the caller answers the request with it
            result, exc = None, e
        with self._lock:
            self._results.append((done, result, exc))
            if self._notified:
                return True
            self._notified = True
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody waits for these answers
            with self._lock:
                self._running = False
            return False
        return True

    def _deliver(self) -> None:
        with self._lock:
            self._notified = False
            results, self._results = self._results, deque()
        for done, result, exc in results:
            try:
                done(result, exc)
            except Exception as e:  # a bug in one callback must not strand the others
                self._loop.call_exception_handler(
                    {"message": "lane result callback failed", "exception": e}
                )
