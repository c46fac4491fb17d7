"""Who is using a workspace, as the control plane sees it, and whether it is being put
to sleep: what the idle reaper and the waker agree on.

Use is of two kinds. Traffic (:meth:`Activity.touch`): a terminal's input or output, a
proxied WebSocket's messages; a session that is open but silent is idle. Work in flight
(:meth:`Activity.busy`): an exec, a proxied HTTP request; the workspace is in use for as
long as it lasts, however quiet. Sessions the node serves without the control plane
(forwards) the node reports itself (``NodeClient.activity``).

The race between a stop for idleness and a request that just arrived is settled here,
on one event loop and without an ``await`` between a check and its consequence: the
reaper stops a workspace only if nothing is busy in it, and marks it *stopping* in the
same step (:meth:`Activity.begin_stop`); a request that becomes busy while it is
stopping waits for the stop to finish (:meth:`Activity.settled`) and then wakes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Activity"]


class Activity:
    """Use of the workspaces of one control plane, by id. Not thread-safe: the event
    loop's only."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._last: dict[str, float] = {}
        self._busy: dict[str, int] = {}
        self._stopping: dict[str, asyncio.Event] = {}

    def touch(self, id: str) -> None:
        """Traffic now."""
        self._last[id] = self.clock()

    @contextmanager
    def busy(self, id: str) -> Iterator[None]:
        """Work in flight for the duration of the block (and traffic at both ends)."""
        self.touch(id)
        self._busy[id] = self._busy.get(id, 0) + 1
        try:
            yield
        finally:
            self._busy[id] -= 1
            if not self._busy[id]:
                del self._busy[id]
            self.touch(id)

    def is_busy(self, id: str) -> bool:
        """Work in flight now."""
        return id in self._busy

    def last(self, id: str) -> float | None:
        """When it was last used (None: not since this control plane started)."""
        return self._last.get(id)

    def first_seen(self, id: str) -> float:
        """When it was last used, counting its first sighting as a use (a control plane
        that just started must not stop everything it finds at once)."""
        if id not in self._last:
            self._last[id] = self.clock()
        return self._last[id]

    def begin_stop(self, id: str) -> bool:
        """Mark the workspace as being put to sleep, unless something is busy in it (or
        it already is): True when the caller may stop it."""
        if id in self._busy or id in self._stopping:
            return False
        self._stopping[id] = asyncio.Event()
        return True

    def end_stop(self, id: str) -> None:
        """The stop is over (done or failed): waiters go on."""
        event = self._stopping.pop(id, None)
        if event is not None:
            event.set()

    async def settled(self, id: str) -> None:
        """Return once no stop of the workspace is under way."""
        while (event := self._stopping.get(id)) is not None:
            await event.wait()

    def forget(self, id: str) -> None:
        """The workspace is gone."""
        self._last.pop(id, None)
