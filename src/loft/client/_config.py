"""Where the API is and which token to send: ``LOFT_URL`` and ``LOFT_TOKEN`` first, then
what ``loft login`` saved (``$XDG_CONFIG_HOME/loft/login.json``, else
``~/.config/loft/login.json``, mode 0600), and last the local socket under the data dir,
where root on the node is admin without a token."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from loft.client._errors import ClientError

__all__ = ["Endpoint", "forget_login", "local_socket", "login_file", "resolve", "save_login"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An API URL, the token to send there (None over the local socket), a CA file for
    a certificate the system does not trust, and where this came from (for messages)."""

    url: str
    token: str | None
    ca: str | None = None
    source: str = ""


def login_file(env: Mapping[str, str] | None = None) -> Path:
    """Where ``loft login`` keeps the endpoint."""
    e = os.environ if env is None else env
    base = Path(e["XDG_CONFIG_HOME"]) if e.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "loft" / "login.json"


def local_socket(env: Mapping[str, str] | None = None) -> Path:
    """The control plane's root-only local socket under the data dir."""
    e = os.environ if env is None else env
    return Path(e.get("LOFT_DATA_DIR") or "/var/lib/loft") / "run" / "api.sock"


def resolve(env: Mapping[str, str] | None = None) -> Endpoint:
    """The endpoint a command should use (see the module's order)."""
    e = os.environ if env is None else env
    if e.get("LOFT_URL"):
        return Endpoint(e["LOFT_URL"], e.get("LOFT_TOKEN") or None, e.get("LOFT_CA"), "LOFT_URL")
    path = login_file(e)
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            token = e.get("LOFT_TOKEN") or saved.get("token")
            return Endpoint(saved["url"], token, saved.get("ca"), str(path))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ClientError(
                f"cannot read {path}: {err}", hint="log in again: `loft login URL --token T`"
            ) from None
    sock = local_socket(e)
    return Endpoint(f"unix://{sock}", e.get("LOFT_TOKEN") or None, None, "the local socket")


def save_login(endpoint: Endpoint, env: Mapping[str, str] | None = None) -> Path:
    """Keep ``endpoint`` for later commands: a file only its owner can read (it holds a
    token), written whole or not at all."""
    path = login_file(env)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"url": endpoint.url, "token": endpoint.token, "ca": endpoint.ca}, f)
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def forget_login(env: Mapping[str, str] | None = None) -> bool:
    """Remove the saved endpoint; True when there was one."""
    path = login_file(env)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
