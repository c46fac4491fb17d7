"""The workspace's server: ``loft.toml``'s ``[run]`` table.

```toml
[run]
command = "python3 -m http.server 8000"
```

A sandbox's processes do not survive a stop (memory snapshots are the VM runtime's), so
the node starts ``command`` (with ``/bin/sh -c``, in the workspace's home) on every start
and wake, and keeps what it writes for ``loft logs``. Parsing is pure and bounded: the
text comes from a tenant.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from loft.envstore import EnvstoreError

__all__ = ["MAX_RUN_COMMAND", "RunSpec", "RunSpecError", "parse_run"]

#: The longest command (a shell line; anything longer belongs in a script).
MAX_RUN_COMMAND = 4096


class RunSpecError(EnvstoreError):
    """``loft.toml``'s ``[run]`` table is malformed."""


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What to start on every start and wake."""

    command: str


def parse_run(text: str, *, source: str = "loft.toml") -> RunSpec | None:
    """The ``[run]`` table of a spec's TOML text; None when it has none, or when the
    spec is a ``loft.lock`` (JSON: it pins an environment and names no server)."""
    if text.lstrip().startswith("{"):
        return None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RunSpecError(f"{source}: not valid TOML: {e}") from e
    run = doc.get("run")
    if run is None:
        return None
    if not isinstance(run, dict):
        raise RunSpecError(f"{source}: run must be a table", hint='[run] command = "..."')
    unknown = sorted(set(run) - {"command"})
    if unknown:
        raise RunSpecError(f"{source}: unknown key run.{unknown[0]}", hint="known keys: command")
    command = run.get("command")
    if not isinstance(command, str) or not command.strip():
        raise RunSpecError(f"{source}: run.command must be a non-empty string")
    if len(command.encode()) > MAX_RUN_COMMAND or "\0" in command:
        raise RunSpecError(
            f"{source}: run.command is over {MAX_RUN_COMMAND} bytes or holds a NUL",
            hint="put a long command in a script and run that",
        )
    return RunSpec(command)
