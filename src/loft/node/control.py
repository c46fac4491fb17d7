"""The disk service's control socket: JSON lines over a Unix socket.

While a volume is served, the serving disk service owns its working copy and lease, and
the catalog's head row names this socket; ``loft volume snapshot/info/import/export``
find it there and ask the service instead of opening the volume themselves.

One request per connection: a JSON object on one line (``{"op": ..., ...}``), answered by
one JSON line (``{"ok": true, ...}`` or ``{"ok": false, "error": ..., "hint": ...}``).
"""

from __future__ import annotations

import json
import socket
from typing import Any

from loft.errors import LoftError

#: Bounded so a wedged service never hangs the CLI forever; commits can take a while.
DEFAULT_TIMEOUT = 120.0
MAX_LINE = 1 << 20


class ControlError(LoftError):
    """The disk service refused a request or could not be reached."""


def request(
    path: str, op: str, /, *, timeout: float = DEFAULT_TIMEOUT, **args: Any
) -> dict[str, Any]:
    """Send one request to the service at ``path`` and return its answer."""
    msg = json.dumps({"op": op, **args}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(msg)
            buf = b""
            while not buf.endswith(b"\n"):
                part = s.recv(65536)
                if not part:
                    break
                buf += part
                if len(buf) > MAX_LINE:
                    raise ControlError("the disk service sent an oversized answer")
    except OSError as e:
        raise ControlError(
            f"cannot reach the disk service at {path}: {e.strerror or e}",
            hint="is `loft disk serve` running? its lease expires if it died",
        ) from e
    try:
        answer = json.loads(buf)
    except ValueError:
        raise ControlError(f"the disk service at {path} sent a malformed answer") from None
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "request failed"), hint=answer.get("hint"))
    return dict(answer)
