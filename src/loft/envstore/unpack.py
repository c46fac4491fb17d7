"""Unpack an artefact into a scratch tree, inside the bubblewrap jail.

The privileged builder never parses an artefact itself: ``_unpack_helper.py`` does, as
uid nobody with no network (see :func:`loft.envstore.sandbox.unpack_argv`). The tree it
leaves is then canonicalised and added by the store.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Literal

from loft.envstore import EnvstoreError
from loft.envstore.sandbox import unpack_argv

__all__ = ["HELPER", "Kind", "UnpackError", "unpack"]

HELPER = Path(__file__).with_name("_unpack_helper.py")
Kind = Literal["deb", "wheel", "npm"]
_TIMEOUT = 300


class UnpackError(EnvstoreError):
    """An artefact holds something no store path may (or is not a valid archive)."""


def unpack(kind: Kind, artefact: Path, out: Path, what: str, extra: str = "") -> None:
    """Unpack ``artefact`` into the empty directory ``out``; ``what`` names it in errors.

    ``extra`` is the Debian package name for a .deb (its control scripts are kept under
    ``var/lib/dpkg/info``) and the python version (``3.11``) for a wheel.
    """
    out.mkdir(exist_ok=True)
    argv = unpack_argv(HELPER, kind, artefact, out, extra)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    if r.returncode == 0:
        return
    try:
        message = json.loads(r.stdout)["error"]
    except (ValueError, KeyError, TypeError):
        message = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
    raise UnpackError(f"{what}: refused to unpack: {message}")
