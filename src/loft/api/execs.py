"""Running a command in a workspace (``POST /v1/workspaces/{name}/exec``).

The answer streams: ``application/x-ndjson``, one :class:`ExecEvent` a line, output as it
comes (base64, so any bytes pass) and last the exit code, or an error if the run broke
off. A client reads lines until the ``exit`` or ``error`` event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal

from loft.api._rules import FORBID_EXTRA, Int, Rule, Str

__all__ = ["MAX_EXEC_STDIN", "MAX_EXEC_TIMEOUT", "ExecEvent", "ExecRequest"]

#: The longest a command may run through the API (seconds).
MAX_EXEC_TIMEOUT = 3600.0
#: The most standard input an exec request carries (characters; its body's limit is
#: 16 MiB, JSON escapes included).
MAX_EXEC_STDIN = 8 << 20


@dataclass(frozen=True, slots=True)
class ExecRequest:
    """A command (argv, no shell) with its environment, directory, input and deadline."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    command: Annotated[
        list[Annotated[str, Rule(max_length=32 * 1024)]], Rule(min_length=1, max_length=4096)
    ]
    env: Annotated[
        dict[
            Annotated[str, Rule(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")],
            Annotated[str, Rule(max_length=32 * 1024)],
        ],
        Rule(max_length=256),
    ] = field(default_factory=dict)
    cwd: Annotated[str, Rule(pattern=r"^/", max_length=4096)] | None = None
    #: bytes for the command's standard input, as text (UTF-8)
    stdin: Annotated[str, Rule(max_length=MAX_EXEC_STDIN)] = ""
    #: seconds the command may run before it is killed
    timeout: Annotated[float, Rule(gt=0, le=MAX_EXEC_TIMEOUT)] = 60.0
    #: the uid inside the workspace it runs as (1000: runner; 0: the workspace's root,
    #: an unprivileged id on the host)
    user: Annotated[int, Rule(ge=0, le=65535)] = 1000


@dataclass(frozen=True, slots=True)
class ExecEvent:
    """One line of an exec's stream: ``stdout``/``stderr`` carry ``data`` (base64),
    ``exit`` carries ``code``, ``error`` carries ``error`` and ``hint``."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    type: Literal["stdout", "stderr", "exit", "error"]
    data: Str = ""
    code: Int | None = None
    error: Str | None = None
    hint: Str | None = None
