"""What every ``loft`` command group prints the same way: ``--json``, tables, sizes and
times.

Tables import rich when they are drawn, so a command printing JSON or one line does not
pay for it; nothing here imports click, so the quick path (:mod:`loft.cli.quick`) prints
through it too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence

from loft.units import format_size

__all__ = ["echo", "echo_json", "plain", "size", "table", "when"]


def echo(line: str) -> None:
    """Print one line on stdout, flushed (a command may go on waiting after it)."""
    print(line, flush=True)


def echo_json(obj: object) -> None:
    """Print ``obj`` as JSON on stdout: indented, keys sorted (every ``--json``)."""
    echo(json.dumps(obj, indent=2, sort_keys=True))


def plain(obj: object) -> object:
    """An API dataclass as plain JSON values, for ``--json``."""
    import dataclasses

    return dataclasses.asdict(obj)  # type: ignore[call-overload]


def when(ts: float) -> str:
    """A moment in local time, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def table(
    rows: Iterable[Sequence[str]], columns: Sequence[str], *, show_header: bool = True
) -> None:
    """Print ``rows`` under ``columns`` as a table on stdout, sized to the terminal."""
    from rich.console import Console
    from rich.table import Table

    t = Table(*columns, show_header=show_header)
    for row in rows:
        t.add_row(*row)
    Console().print(t)


def size(n: float, *, compact: bool = False) -> str:
    """Bytes for people, ``512 B`` or ``1.5 MiB``; ``compact``, the way ``--size`` takes
    them (``16G``, ``1.5M``, ``512``), for volume sizes and what volumes move."""
    if compact:
        return format_size(int(n))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
