"""A workspace's phases and the commands each allows: every rule in this one table.

Firecracker's controllers refuse a command sent in the wrong phase; so does the runtime,
before it runs anything. The phase itself is runc's view of the container (created,
running, paused, stopped), because containers outlive the agent that started them; a
container runc does not know is ``STOPPED``::

    STOPPED --start--> RUNNING --freeze--> PAUSED
       ^                  |  <---thaw-----   |
       +------stop--------+------stop--------+
    CREATED (a start cut short) --stop--> STOPPED

``start`` passes through ``CREATED`` (runc create, then start); one that failed there
leaves ``CREATED`` only if the agent died half way, and ``stop`` cleans it.
"""

from __future__ import annotations

import enum

from loft.runtime.errors import PhaseError

__all__ = ["ALLOWED", "Command", "Phase", "check"]


class Phase(enum.Enum):
    """Where a workspace's container is in its life (runc's status names)."""

    STOPPED = "stopped"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"


class Command(enum.Enum):
    """What the runtime can be asked to do to a workspace."""

    START = "start"
    STOP = "stop"
    EXEC = "exec"
    PTY = "pty"
    FORWARD = "forward"
    FREEZE = "freeze"
    THAW = "thaw"
    FREEZE_FS = "freeze-fs"
    THAW_FS = "thaw-fs"
    STATS = "stats"
    SNAPSHOT = "snapshot"
    RESTORE = "restore"


_LIVE = frozenset({Phase.RUNNING, Phase.PAUSED})
#: Command -> the phases it is allowed in. Stop is allowed everywhere (it is also how a
#: start cut short is cleaned); a filesystem can be frozen with the processes running
#: or paused; a snapshot of a sandbox is taken while it is live (the disk is its state).
ALLOWED: dict[Command, frozenset[Phase]] = {
    Command.START: frozenset({Phase.STOPPED}),
    Command.RESTORE: frozenset({Phase.STOPPED}),
    Command.STOP: frozenset(Phase),
    Command.EXEC: frozenset({Phase.RUNNING}),
    Command.PTY: frozenset({Phase.RUNNING}),
    Command.FORWARD: frozenset({Phase.RUNNING}),
    Command.FREEZE: frozenset({Phase.RUNNING}),
    Command.THAW: frozenset({Phase.PAUSED}),
    Command.FREEZE_FS: _LIVE,
    Command.THAW_FS: _LIVE,
    Command.STATS: _LIVE,
    Command.SNAPSHOT: _LIVE,
}


def check(workspace: str, command: Command, phase: Phase) -> None:
    """Refuse ``command`` on ``workspace`` unless ``phase`` allows it."""
    if phase not in ALLOWED[command]:
        allowed = ", ".join(sorted(p.value for p in ALLOWED[command]))
        raise PhaseError(
            f"workspace {workspace} is {phase.value}: {command.value} needs it {allowed}",
            hint={Phase.PAUSED: "thaw it first", Phase.STOPPED: "start it first"}.get(phase),
        )
