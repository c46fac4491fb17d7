"""Saving and loading a VM's state over QMP: a migration to and from a file.

QEMU 7.2 has no ``file:`` migration URI, so the stream goes through ``exec:cat``. With the
``x-ignore-shared`` capability, RAM that is a shared mapping of a file is not sent (it is
already in the file): the stream is device state only, tens of KB. The default bandwidth
limit (128 MiB/s) is lifted, for a VM whose RAM is not shared and is sent whole.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from loft.runtime.errors import WorkspaceError
from loft.runtime.qmp import QmpClient, QmpError

__all__ = ["SAVE_TIMEOUT", "STATE", "STATE_SLACK", "load_state", "save_state"]

#: Device state takes tens of milliseconds; a whole 1 GiB RAM about 2 s here.
SAVE_TIMEOUT = 60.0
#: The state file, in a memory image's directory as in a suspended VM's.
STATE = "state"
#: A state file holds device state (tens of KB) and, for a VM whose RAM is a private
#: mapping of an image, its RAM: never more than this beyond the VM's memory size.
STATE_SLACK = 64 << 20


def _migration(qmp: QmpClient, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + SAVE_TIMEOUT
    while True:
        info: dict[str, Any] = qmp.execute("query-migrate") or {}
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise WorkspaceError(f"{what} failed: {info.get('error-desc', status)}")
        if time.monotonic() > deadline:
            raise WorkspaceError(f"{what} did not finish in {SAVE_TIMEOUT:.0f} s")
        time.sleep(0.005)


def _capabilities(qmp: QmpClient) -> None:
    qmp.execute("migrate-set-capabilities",
                {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})  # fmt: skip


def save_state(qmp: QmpClient, state: Path) -> None:
    """Migrate the stopped VM's device state (RAM is shared, so skipped) into ``state``."""
    _capabilities(qmp)
    # The default 128 MiB/s would throttle a VM whose RAM is not shared.
    qmp.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
    tmp = state.with_name(state.name + ".tmp")
    tmp.unlink(missing_ok=True)
    qmp.execute("migrate", {"uri": f"exec:cat > {_shell_quote(tmp)}"})
    _migration(qmp, "saving the VM")
    os.chmod(tmp, 0o600)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, state)


def load_state(qmp: QmpClient, state: Path) -> None:
    _capabilities(qmp)
    qmp.execute("migrate-incoming", {"uri": f"exec:cat {_shell_quote(state)}"})
    try:
        _migration(qmp, "loading the VM's state")
    except QmpError as e:  # QEMU exits when a load fails
        raise WorkspaceError(f"loading the VM's state failed: {e}",
                             hint="its suspend image is damaged") from e  # fmt: skip


def _shell_quote(path: Path) -> str:
    """``path`` for QEMU's ``exec:`` migration URI, which runs ``/bin/sh -c``."""
    return "'" + str(path).replace("'", "'\\''") + "'"
