"""Thread priorities: background work lowers only its own threads, and a priority pool
runs each call at its caller's priority. Read back from the kernel, not from loft."""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from loft.priority import BACKGROUND, PriorityPools, lower_thread_priority

_IOPRIO_GET = {"x86_64": 252, "aarch64": 31}.get(platform.machine())

pytestmark = pytest.mark.skipif(_IOPRIO_GET is None, reason="ioprio_get number unknown here")


def thread_state(tid: int | None = None) -> tuple[int, int, int]:
    """(niceness, I/O class, I/O level) of a thread of this process, as the kernel has it:
    the niceness from /proc/self/task/TID/stat, the I/O priority from ioprio_get."""
    tid = threading.get_native_id() if tid is None else tid
    with open(f"/proc/self/task/{tid}/stat") as f:
        nice = int(f.read().rsplit(")", 1)[1].split()[16])
    assert _IOPRIO_GET is not None
    ioprio = ctypes.CDLL(None, use_errno=True).syscall(_IOPRIO_GET, 1, tid)
    assert ioprio >= 0, os.strerror(ctypes.get_errno())
    return nice, ioprio >> 13, ioprio & 7


BACKGROUND_STATE = (BACKGROUND.nice, BACKGROUND.io_class, BACKGROUND.io_level)


def test_priority_pools_run_calls_at_the_callers_priority() -> None:
    pools = PriorityPools(2, "prio-test")
    try:
        caller = thread_state()
        assert pools.submit(thread_state).result() == caller

        def background() -> tuple[tuple[int, int, int], tuple[int, int, int]]:
            lower_thread_priority()
            return thread_state(), pools.submit(thread_state).result()

        with ThreadPoolExecutor(1) as ex:
            own, worker = ex.submit(background).result()
        assert own == worker == BACKGROUND_STATE
        # The foreground's pool was not touched by the background's work.
        assert pools.submit(thread_state).result() == caller
        assert list(pools.map(lambda _: thread_state(), range(3))) == [caller] * 3
    finally:
        pools.shutdown()
    assert thread_state() == caller  # the caller itself never changed
