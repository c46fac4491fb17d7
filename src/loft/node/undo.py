"""Explicit undo steps, so a flow is all or nothing.

A flow that makes several things (a catalog row, a profile, a volume, a mount, a
container) pushes the step that unmakes each one right after making it; if anything
later fails, the steps run in reverse and the failure is re-raised, so a failed
``loft new`` leaves no row, profile, volume, mount, cgroup or container behind. An undo
step that fails is logged and the others still run: the original failure is what the
caller must see.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Undo", "all_or_nothing"]

log = logging.getLogger("loft.node")


class Undo:
    """A stack of undo steps."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, step: Callable[[], object]) -> None:
        """Remember how to undo ``what``."""
        self._steps.append((what, step))

    def run(self) -> None:
        """Run every step, newest first; a failing step is logged, not raised."""
        while self._steps:
            what, step = self._steps.pop()
            try:
                step()
            except Exception as e:  # the original failure matters more; keep undoing
                log.error("undo.failed step=%s error=%s", json.dumps(what), json.dumps(str(e)))

    def clear(self) -> None:
        """Keep what was made: the flow succeeded."""
        self._steps.clear()


@contextmanager
def all_or_nothing() -> Iterator[Undo]:
    """An :class:`Undo` whose steps run if the block raises (anything, even Ctrl-C)."""
    undo = Undo()
    try:
        yield undo
    except BaseException:
        undo.run()
        raise
    undo.clear()
