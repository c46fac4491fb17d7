"""The typed client of the control plane's API: one method per operation, the API's own
dataclasses in and out (:mod:`loft.api`), errors as :mod:`loft.client` exceptions."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from loft import api
from loft.client._decode import decode
from loft.client._errors import TransportError, error_for
from loft.client._transport import (
    DEFAULT_TIMEOUT,
    HttpxTransport,
    Reply,
    StdlibTransport,
    Transport,
)

if TYPE_CHECKING:
    from loft.client._websocket import WebSocket

__all__ = ["Client", "ExecResult"]

T = TypeVar("T")
#: Seconds past an exec's own timeout the client waits for its end.
_EXEC_GRACE = 15.0


@dataclass(frozen=True, slots=True)
class ExecResult:
    """A finished command: its exit code and everything it wrote."""

    code: int
    stdout: bytes
    stderr: bytes


def _body(obj: object) -> bytes:
    fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]
    return json.dumps(fields, default=_plain).encode()


def _plain(obj: object) -> object:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    raise TypeError(f"{type(obj).__name__} has no JSON form")


def _q(name: str) -> str:
    return quote(name, safe="")


class Client:
    """A client of one control plane. ``url`` is ``https://HOST:PORT``,
    ``http://127.0.0.1:PORT`` or ``unix:///path/to/api.sock``; ``token`` a bearer token
    (none over the local socket as root). The default transport is httpx; the CLI uses
    :meth:`light`, on the standard library."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        ca: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: Transport | None = None,
    ) -> None:
        self.url = url
        self._token = token
        self._ca = ca
        self._transport = transport or HttpxTransport(url, ca=ca, timeout=timeout)

    @classmethod
    def light(
        cls, url: str, token: str | None = None, *, ca: str | None = None, timeout: float = 60.0
    ) -> Client:
        """A client on ``http.client``: nothing heavy imported (what the CLI uses)."""
        return cls(url, token, ca=ca, transport=StdlibTransport(url, ca=ca, timeout=timeout))

    def close(self) -> None:
        """Release the transport's connections."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ----------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | list[str] | None] | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> Reply:
        headers = {"accept": "application/json"}
        if self._token:
            headers["authorization"] = f"Bearer {self._token}"
        if body is not None:
            headers["content-type"] = content_type
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        reply = self._transport.request(
            method, path, params=clean, body=body, headers=headers, timeout=timeout
        )
        if reply.status >= 400:
            raise self._error(reply)
        return reply

    @staticmethod
    def _error(reply: Reply) -> Exception:
        raw = reply.read()
        try:
            data = json.loads(raw)
            return error_for(reply.status, str(data["error"]), data.get("hint"))
        except (ValueError, KeyError, TypeError):
            text = raw[:200].decode("utf-8", "replace").strip()
            return error_for(reply.status, f"HTTP {reply.status}: {text or 'no details'}", None)

    def _json(self, method: str, path: str, **kw: Any) -> object:
        raw = self._send(method, path, **kw).read()
        try:
            return json.loads(raw)
        except ValueError:
            raise TransportError(f"the API sent a malformed answer to {method} {path}") from None

    def _call(self, answer: type[T], method: str, path: str, **kw: Any) -> T:
        result: T = decode(answer, self._json(method, path, **kw))
        return result

    def _list(self, item: type[T], method: str, path: str, **kw: Any) -> list[T]:
        result: list[T] = decode(list[item], self._json(method, path, **kw))  # type: ignore[valid-type]
        return result

    # --- health, users, tokens -----------------------------------------------------------

    def health(self) -> api.Health:
        """``GET /healthz``."""
        return self._call(api.Health, "GET", "/healthz")

    def me(self) -> api.User:
        """Who this client's token belongs to."""
        return self._call(api.User, "GET", "/v1/me")

    def users(self) -> list[api.User]:
        """Every user (admin)."""
        return self._list(api.User, "GET", "/v1/users")

    def user(self, name: str) -> api.User:
        """One user (admin)."""
        return self._call(api.User, "GET", f"/v1/users/{_q(name)}")

    def create_user(
        self, name: str, *, admin: bool = False, quotas: api.Quotas | None = None
    ) -> api.UserCreated:
        """Make a user (admin); the answer holds their first token."""
        req = api.CreateUser(name, admin, quotas or api.Quotas())
        return self._call(api.UserCreated, "POST", "/v1/users", body=_body(req))

    def update_user(
        self, name: str, *, admin: bool | None = None, quotas: api.Quotas | None = None
    ) -> api.User:
        """Change a user's admin flag or quotas (admin)."""
        body = _body(api.UpdateUser(admin, quotas))
        return self._call(api.User, "PATCH", f"/v1/users/{_q(name)}", body=body)

    def delete_user(self, name: str) -> api.User:
        """Delete a user who owns no workspaces (admin)."""
        return self._call(api.User, "DELETE", f"/v1/users/{_q(name)}")

    def tokens(self) -> list[api.Token]:
        """This user's tokens."""
        return self._list(api.Token, "GET", "/v1/tokens")

    def create_token(self, name: str = "") -> api.TokenCreated:
        """A new token for this user (its secret is in the answer only)."""
        body = _body(api.CreateToken(name))
        return self._call(api.TokenCreated, "POST", "/v1/tokens", body=body)

    def revoke_token(self, token_id: str) -> api.Token:
        """Revoke one of this user's tokens."""
        return self._call(api.Token, "DELETE", f"/v1/tokens/{_q(token_id)}")

    # --- workspaces --------------------------------------------------------------------

    def workspaces(
        self,
        *,
        owner: str | None = None,
        state: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[api.Workspace]:
        """Workspaces: this user's (an admin's call lists everyone's, or ``owner``'s)."""
        params: dict[str, str | list[str] | None] = {"owner": owner, "state": state}
        if labels:
            params["label"] = [f"{k}={v}" for k, v in labels.items()]
        return self._list(api.Workspace, "GET", "/v1/workspaces", params=params)

    def create_workspace(self, req: api.CreateWorkspace) -> api.Workspace:
        """Make a workspace (see :class:`loft.api.CreateWorkspace` for every field)."""
        return self._call(api.Workspace, "POST", "/v1/workspaces", body=_body(req))

    def workspace(self, name: str, *, owner: str | None = None) -> api.Workspace:
        """One workspace with its state."""
        path = f"/v1/workspaces/{_q(name)}"
        return self._call(api.Workspace, "GET", path, params={"owner": owner})

    def update_workspace(
        self,
        name: str,
        *,
        limits: api.Limits | None = None,
        idle_timeout: float | None = None,
        metadata: dict[str, str] | None = None,
        preview_public: bool | None = None,
        owner: str | None = None,
    ) -> api.Workspace:
        """Change a workspace's limits, idle timeout, metadata or preview setting."""
        body = _body(api.UpdateWorkspace(limits, idle_timeout, metadata, preview_public))
        path = f"/v1/workspaces/{_q(name)}"
        return self._call(api.Workspace, "PATCH", path, body=body, params={"owner": owner})

    def delete_workspace(self, name: str, *, owner: str | None = None) -> api.WorkspaceDeleted:
        """Delete a workspace with its disk and snapshots."""
        path = f"/v1/workspaces/{_q(name)}"
        return self._call(api.WorkspaceDeleted, "DELETE", path, params={"owner": owner})

    def start(self, name: str, *, owner: str | None = None) -> api.Workspace:
        """Start a workspace."""
        path = f"/v1/workspaces/{_q(name)}/start"
        return self._call(api.Workspace, "POST", path, params={"owner": owner})

    def stop(self, name: str, *, cold: bool = False, owner: str | None = None) -> api.Workspace:
        """Stop a workspace (a VM is suspended, unless ``cold``)."""
        path = f"/v1/workspaces/{_q(name)}/stop"
        body = _body(api.StopWorkspace(cold)) if cold else None
        return self._call(api.Workspace, "POST", path, body=body, params={"owner": owner})

    def restore(self, name: str, snapshot: str, *, owner: str | None = None) -> api.Restored:
        """Point a workspace's disk back at a snapshot (undoable: see ``undo_snapshot``)."""
        path = f"/v1/workspaces/{_q(name)}/restore"
        body = _body(api.RestoreWorkspace(snapshot))
        return self._call(api.Restored, "POST", path, body=body, params={"owner": owner})

    def fork(
        self,
        name: str,
        new_name: str,
        *,
        snapshot: str | None = None,
        start: bool = True,
        metadata: dict[str, str] | None = None,
        live: bool = False,
        owner: str | None = None,
        new_machine_id: bool = False,
    ) -> api.Workspace:
        """A new workspace from ``name`` (its snapshot, or its state now); ``live``: a
        VM's running copy from its memory (``new_machine_id``: with a new
        ``/etc/machine-id``)."""
        path = f"/v1/workspaces/{_q(name)}/fork"
        body = _body(api.ForkWorkspace(new_name, snapshot, start, metadata, live, new_machine_id))
        return self._call(api.Workspace, "POST", path, body=body, params={"owner": owner})

    # --- snapshots -----------------------------------------------------------------------

    def snapshots(self, name: str, *, owner: str | None = None) -> list[api.Snapshot]:
        """A workspace's snapshots, oldest first."""
        path = f"/v1/workspaces/{_q(name)}/snapshots"
        return self._list(api.Snapshot, "GET", path, params={"owner": owner})

    def snapshot(
        self, name: str, snapshot: str | None = None, *, owner: str | None = None
    ) -> api.Snapshot:
        """Snapshot a workspace now."""
        path = f"/v1/workspaces/{_q(name)}/snapshots"
        body = _body(api.CreateSnapshot(snapshot))
        return self._call(api.Snapshot, "POST", path, body=body, params={"owner": owner})

    def delete_snapshot(
        self, name: str, snapshot: str, *, owner: str | None = None
    ) -> api.SnapshotDeleted:
        """Delete one snapshot."""
        path = f"/v1/workspaces/{_q(name)}/snapshots/{_q(snapshot)}"
        return self._call(api.SnapshotDeleted, "DELETE", path, params={"owner": owner})

    # --- exec ----------------------------------------------------------------------------

    def exec_stream(
        self, name: str, req: api.ExecRequest, *, owner: str | None = None
    ) -> Iterator[api.ExecEvent]:
        """Run a command; yield its events as they come (output base64 in ``data``), the
        last one ``exit`` (or ``error``)."""
        reply = self._send(
            "POST",
            f"/v1/workspaces/{_q(name)}/exec",
            body=_body(req),
            params={"owner": owner},
            timeout=req.timeout + _EXEC_GRACE,
        )
        for line in reply.lines():
            if line.strip():
                try:
                    event: api.ExecEvent = decode(api.ExecEvent, json.loads(line))
                except ValueError:
                    raise TransportError("the API sent a malformed exec event") from None
                yield event

    def exec(
        self,
        name: str,
        command: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stdin: str = "",
        timeout: float = 60.0,
        owner: str | None = None,
    ) -> ExecResult:
        """Run a command to its end; its exit code and output."""
        req = api.ExecRequest(command, env or {}, cwd, stdin, timeout)
        out = {"stdout": bytearray(), "stderr": bytearray()}
        for event in self.exec_stream(name, req, owner=owner):
            if event.type in out:
                out[event.type] += base64.b64decode(event.data)
            elif event.type == "exit":
                return ExecResult(event.code or 0, bytes(out["stdout"]), bytes(out["stderr"]))
            else:
                raise error_for(event.code or 502, event.error or "exec failed", event.hint)
        raise TransportError("the API ended an exec without its exit code")

    # --- logs and previews ----------------------------------------------------------------

    def logs(
        self, name: str, *, tail: int = 65536, follow: bool = False, owner: str | None = None
    ) -> Iterator[bytes]:
        """The output of the workspace's ``[run] command`` (its last ``tail`` bytes), and
        with ``follow`` what it writes next, a line at a time, until the caller stops."""
        params = {"tail": str(tail), "follow": "true" if follow else "false", "owner": owner}
        reply = self._send(
            "GET",
            f"/v1/workspaces/{_q(name)}/logs",
            params=params,
            timeout=86400.0 if follow else None,  # a quiet server is no error
        )
        try:
            yield from reply.lines()
        finally:
            reply.close()

    def preview(self, name: str, port: int, *, owner: str | None = None) -> api.PreviewAccess:
        """Where ``port`` of the workspace is previewed, and a browser's login link."""
        return self._call(
            api.PreviewAccess,
            "POST",
            f"/v1/workspaces/{_q(name)}/preview",
            body=_body(api.CreatePreview(port)),
            params={"owner": owner},
        )

    # --- WebSockets: terminals and port tunnels ------------------------------------------

    def terminal(
        self,
        name: str,
        *,
        rows: int = 24,
        cols: int = 80,
        user: str = "runner",
        session: str | None = None,
        owner: str | None = None,
    ) -> WebSocket:
        """A shell on a terminal in the workspace (docs/control-plane.md, "Terminal protocol"):
        binary messages are its input and output; the first text message names the
        session (``session=`` re-attaches within its grace period), the last its exit."""
        params = {"rows": str(rows), "cols": str(cols), "user": user}
        params |= {"session": session or "", "owner": owner or ""}
        return self._websocket(f"/v1/workspaces/{_q(name)}/terminal", params)

    def port(self, name: str, port: int, *, owner: str | None = None) -> WebSocket:
        """One TCP connection to ``port`` on the workspace's loopback, its bytes as binary
        messages both ways (what ``loft forward`` opens per local connection)."""
        path = f"/v1/workspaces/{_q(name)}/ports/{port}"
        return self._websocket(path, {"owner": owner or ""})

    def _websocket(self, path: str, params: dict[str, str]) -> WebSocket:
        from loft.client._websocket import WebSocket

        return WebSocket.open(self.url, path, params=params, token=self._token, ca=self._ca)

    # --- files ---------------------------------------------------------------------------

    def read_file(self, name: str, path: str, *, owner: str | None = None) -> bytes:
        """A file's bytes (up to 16 MiB)."""
        reply = self._send(
            "GET", f"/v1/workspaces/{_q(name)}/files", params={"path": path, "owner": owner}
        )
        return reply.read()

    def write_file(
        self, name: str, path: str, data: bytes, *, owner: str | None = None
    ) -> api.FileWritten:
        """Create or replace a file (up to 16 MiB)."""
        return self._call(
            api.FileWritten,
            "PUT",
            f"/v1/workspaces/{_q(name)}/files",
            params={"path": path, "owner": owner},
            body=data,
            content_type="application/octet-stream",
        )

    def delete_file(self, name: str, path: str, *, owner: str | None = None) -> api.FileDeleted:
        """Remove a file."""
        return self._call(
            api.FileDeleted,
            "DELETE",
            f"/v1/workspaces/{_q(name)}/files",
            params={"path": path, "owner": owner},
        )

    # --- environment ---------------------------------------------------------------------

    def env(self, name: str, *, owner: str | None = None) -> api.EnvState:
        """A workspace's environment generations."""
        path = f"/v1/workspaces/{_q(name)}/env"
        return self._call(api.EnvState, "GET", path, params={"owner": owner})

    def env_switch(self, name: str, env: api.EnvSpec, *, owner: str | None = None) -> api.EnvState:
        """Switch a workspace to new software (a new generation)."""
        path = f"/v1/workspaces/{_q(name)}/env"
        return self._call(api.EnvState, "POST", path, body=_body(env), params={"owner": owner})

    def env_rollback(
        self, name: str, generation: int | None = None, *, owner: str | None = None
    ) -> api.EnvState:
        """Go back to an earlier generation (by default the one before)."""
        path = f"/v1/workspaces/{_q(name)}/env/rollback"
        return self._call(
            api.EnvState,
            "POST",
            path,
            body=_body(api.EnvRollback(generation)),
            params={"owner": owner},
        )
