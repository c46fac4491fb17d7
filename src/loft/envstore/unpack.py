"""Unpack an artefact into a scratch tree, inside the bubblewrap jail.

The privileged builder never parses an artefact itself: ``_unpack_helper.py`` does, as
uid nobody with no network (see :func:`loft.envstore.sandbox.unpack_jail`). The tree it
leaves is then canonicalised and added by the store.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Literal

from loft.envstore import EnvstoreError
from loft.envstore.sandbox import jail_writable, unpack_jail

__all__ = [
    "HELPER",
    "Kind",
    "UnpackError",
    "compiled_helper",
    "jail_readable",
    "unpack",
]

HELPER = Path(__file__).with_name("_unpack_helper.py")
#: The interpreter the jail runs the helper with (the host's, bound read-only).
JAIL_PYTHON = "/usr/bin/python3"
Kind = Literal["deb", "wheel", "npm"]
_TIMEOUT = 300
_COMPILED = "unpack-helper.pyc"
_compile_lock = threading.Lock()


class UnpackError(EnvstoreError):
    """An artefact holds something no store path may (or is not a valid archive)."""


def unpack(kind: Kind, artefact: Path, out: Path, what: str, extra: str = "") -> None:
    """Unpack ``artefact`` into the empty directory ``out``; ``what`` names it in errors.

    ``extra`` is the Debian package name for a .deb (its control scripts are kept under
    ``var/lib/dpkg/info``) and the python version (``3.11``) for a wheel.
    """
    jail_writable(out)
    jail_readable(artefact)
    jail = unpack_jail(compiled_helper(out.parent), kind, artefact, out, extra)
    r = jail.run(capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    if r.returncode == 0:
        return
    try:
        message = json.loads(r.stdout)["error"]
    except (ValueError, KeyError, TypeError):
        message = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
    raise UnpackError(f"{what}: refused to unpack: {message}")


def compiled_helper(scratch: Path) -> Path:
    """The helper compiled for the jail's interpreter, once per scratch directory.

    Python compiles a script on every run and caches nothing; for ~130 jails a build
    that was ~20 ms of CPU each. The bytecode is made by the jail's own interpreter (the
    host's, which may differ from the one running loft) from loft's own source, and
    lives in the scratch space of the build. Falls back to the source if that fails.
    """
    pyc = scratch / _COMPILED
    with _compile_lock:
        if pyc.exists():
            return pyc
        code = "import py_compile, sys; py_compile.compile(sys.argv[1], sys.argv[2], doraise=True)"
        tmp = scratch / f"{_COMPILED}.{threading.get_ident()}.tmp"
        r = subprocess.run(
            [JAIL_PYTHON, "-I", "-S", "-c", code, str(HELPER), str(tmp)],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if r.returncode != 0:
            return HELPER
        jail_readable(tmp)
        tmp.replace(pyc)
        return pyc


def jail_readable(path: Path) -> None:
    """Let the jail's unprivileged uid read ``path`` (an artefact, loft's own helper): a
    loft process creates files 0600 (see :mod:`loft.datadir`), but what the jail reads is
    public, and it stays inside the private scratch space all the same."""
    if os.stat(path).st_mode & 0o004 == 0:
        os.chmod(path, 0o644)
