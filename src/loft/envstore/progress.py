"""What the builder reports while it works, for whoever draws a progress display.

The builder calls one function with these events and draws nothing itself; the CLI turns
them into progress bars on a terminal. Like the blockstore's import/export ``progress``
callback, passing none costs nothing. Events come from the builder's worker threads, so
the function must be thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BuildEvent",
    "BuildProgress",
    "BytesFetched",
    "Task",
    "TaskAdvanced",
    "TaskStarted",
    "TasksFinished",
]

#: The counted tasks of realising artefacts: fetching their files, unpacking them.
Task = Literal["downloading", "unpacking"]


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """``task`` begins, with ``total`` items to do."""

    task: Task
    total: int


@dataclass(frozen=True, slots=True)
class TaskAdvanced:
    """One more item of ``task`` is done."""

    task: Task


@dataclass(frozen=True, slots=True)
class BytesFetched:
    """``task`` has fetched ``total`` bytes so far."""

    task: Task
    total: int


@dataclass(frozen=True, slots=True)
class TasksFinished:
    """The tasks are over, done or failed, and their results are in the store (or not):
    a display can go away."""


BuildEvent = TaskStarted | TaskAdvanced | BytesFetched | TasksFinished
BuildProgress = Callable[[BuildEvent], None]
