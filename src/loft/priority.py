"""Thread priorities: the CPU niceness and I/O priority of the calling thread (Linux).

Background work (a commit reading, hashing, compressing and uploading extents) runs below
the threads that serve clients, so on a small shared machine the foreground wins when
both want a core or the disk. Linux keeps both per thread: ``setpriority`` and
``ioprio_set`` with ``IOPRIO_WHO_PROCESS`` take a thread id.

A thread only ever lowers its own priority (raising it back needs privileges), so work
that must run at its caller's priority on a pool goes to a pool of threads at that
priority: :class:`PriorityPools` keeps one per priority it was asked from. An object
store's transfers thus run at the priority of whoever asked for them: a commit's uploads
in the background, a client's fetch in the foreground.

Where the kernel says no (a seccomp filter, an unknown architecture, a kernel without
I/O priorities) every function here quietly leaves priorities as they are: this is a
preference, never a reason to fail.
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from loft import libc

__all__ = [
    "BACKGROUND",
    "IOPRIO_CLASS_BE",
    "IOPRIO_CLASS_IDLE",
    "IOPRIO_CLASS_NONE",
    "Priority",
    "PriorityPools",
    "apply",
    "current",
    "lower_thread_priority",
]

T = TypeVar("T")
R = TypeVar("R")

IOPRIO_CLASS_NONE = 0
IOPRIO_CLASS_RT = 1
IOPRIO_CLASS_BE = 2
IOPRIO_CLASS_IDLE = 3
_IOPRIO_CLASS_SHIFT = 13
_IOPRIO_WHO_PROCESS = 1
#: (ioprio_set, ioprio_get) syscall numbers; aarch64 uses the generic table.
_SYSCALLS = {"x86_64": (251, 252), "aarch64": (30, 31)}


@dataclass(frozen=True, slots=True, order=True)
class Priority:
    """A thread's niceness (-20..19) and I/O priority class and level (0..7)."""

    nice: int
    io_class: int
    io_level: int = 0

    @property
    def ioprio(self) -> int:
        """The value ``ioprio_set`` takes."""
        return self.io_class << _IOPRIO_CLASS_SHIFT | self.io_level


#: Background work: niceness 10 (CFS weight 110 against 1024 at 0, about a tenth of a
#: contended core) and the lowest best-effort I/O level.
BACKGROUND = Priority(nice=19, io_class=IOPRIO_CLASS_BE, io_level=7)


_numbers = _SYSCALLS.get(platform.machine())


def _tid() -> int:
    return threading.get_native_id()


def _get_ioprio(tid: int) -> int | None:
    if _numbers is None:
        return None
    try:
        return libc.syscall("ioprio_get", _numbers[1], _IOPRIO_WHO_PROCESS, tid)
    except OSError:
        return None


def current() -> Priority:
    """The calling thread's priority. A thread that never set an I/O priority has class
    NONE (the kernel derives a best-effort level from its niceness)."""
    tid = _tid()
    try:
        nice = os.getpriority(os.PRIO_PROCESS, tid)
    except (OSError, AttributeError):
        nice = 0
    ioprio = _get_ioprio(tid) or 0
    return Priority(nice, ioprio >> _IOPRIO_CLASS_SHIFT, ioprio & 0x7)


def apply(priority: Priority) -> None:
    """Set the calling thread's priority, never raising it above what it has (which
    needs privileges): the niceness only goes up, the I/O priority only down."""
    tid = _tid()
    try:
        nice = os.getpriority(os.PRIO_PROCESS, tid)
        if priority.nice > nice:
            os.setpriority(os.PRIO_PROCESS, tid, priority.nice)
    except (OSError, AttributeError):  # not permitted, or not Linux
        pass
    have = _get_ioprio(tid)
    if have is None or _numbers is None:
        return
    if _io_rank(priority.ioprio) > _io_rank(have):
        with contextlib.suppress(OSError):
            libc.syscall("ioprio_set", _numbers[0], _IOPRIO_WHO_PROCESS, tid, priority.ioprio)


def _io_rank(ioprio: int) -> tuple[int, int]:
    """Orders I/O priorities from highest to lowest: RT, BE (and NONE, which is BE at a
    level derived from niceness), IDLE; then the level, 0 first."""
    cls, level = ioprio >> _IOPRIO_CLASS_SHIFT, ioprio & 0x7
    if cls == IOPRIO_CLASS_NONE:
        cls = IOPRIO_CLASS_BE
    return cls, level


def lower_thread_priority() -> None:
    """Run the calling thread as background work (:data:`BACKGROUND`)."""
    apply(BACKGROUND)


class PriorityPools:
    """Thread pools that run each call at its caller's priority: one pool of up to
    ``workers`` threads per priority seen, each thread set to that priority once, when
    it starts. Thread-safe."""

    def __init__(self, workers: int, name: str) -> None:
        self.workers = workers
        self.name = name
        self._pools: dict[Priority, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _pool(self) -> ThreadPoolExecutor:
        prio = current()
        pool = self._pools.get(prio)
        if pool is None:
            with self._lock:
                if self._closed:
                    raise RuntimeError(f"{self.name} pools are shut down")
                pool = self._pools.get(prio)
                if pool is None:
                    background = prio.nice > 0 or prio.io_class == IOPRIO_CLASS_IDLE
                    pool = ThreadPoolExecutor(
                        self.workers,
                        thread_name_prefix=f"{self.name}-bg" if background else self.name,
                        initializer=apply,
                        initargs=(prio,),
                    )
                    self._pools[prio] = pool
        return pool

    def submit(self, fn: Callable[..., R], /, *args: Any) -> Future[R]:
        """Run ``fn(*args)`` on a thread at the caller's priority."""
        return self._pool().submit(fn, *args)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """``fn`` over ``items`` on threads at the caller's priority, results in order."""
        return self._pool().map(fn, items)

    def shutdown(self, wait: bool = True) -> None:
        """Stop every pool's threads."""
        with self._lock:
            self._closed = True
            pools = list(self._pools.values())
        for pool in pools:
            pool.shutdown(wait=wait)
