"""The ``loft`` command.

:func:`run` is the program. The commands users run most (``loft ls``, ``loft snap``)
take the quick path first (:mod:`loft.cli.quick`: their few arguments parsed without
click, ~20 ms of imports saved); everything else, and any of those whose arguments the
quick path does not read (``--help``, a mistake to explain), goes to the click group
(:mod:`loft.cli.group`), which loads each command's module only when it runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from loft.datadir import PRIVATE_UMASK
from loft.errors import LoftError

__all__ = ["reported", "run"]


@contextmanager
def reported() -> Iterator[None]:
    """Run a command: a :class:`LoftError` or an OSError becomes one line on stderr
    (and a hint) and exit 1; Ctrl-C, exit 130."""
    try:
        yield
    except LoftError as e:
        print(f"loft: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"loft: hint: {e.hint}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"loft: error: {e.strerror or e}{where}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("loft: interrupted", file=sys.stderr)
        sys.exit(130)


def run() -> None:
    """The ``loft`` program: the command line, in a process whose every new file is its
    owner's alone (umask 077, see :mod:`loft.datadir`). Set here, not in the click
    group, so code that calls the group in-process (tests) keeps its own umask."""
    os.umask(PRIVATE_UMASK)
    from loft.cli.quick import run_quick

    if run_quick(sys.argv[1:]):
        return
    from loft.cli.group import main

    main()
