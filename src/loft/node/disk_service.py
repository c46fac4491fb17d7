"""The disk service: every volume of the catalog served over NBD by one process.

Exports are ``NAME`` (the volume, read-write; the service takes its lease on first use
and keeps it while it runs) and ``NAME@SNAP`` (a read-only view of a snapshot). All
connections to one volume share one :class:`Volume`, so CAN_MULTI_CONN holds. While a
volume is served, its catalog row names this service's control socket, where the node
API (:mod:`loft.node.api`) answers: the CLI snapshots, inspects and imports into a served
volume through it.

SIGTERM or SIGINT: stop listening, let connections finish, then commit and release every
volume.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from loft.blockstore import Blockstore, SnapshotView, Volume
from loft.blockstore.errors import (
    BlockstoreError,
    InvalidArgument,
    LeaseLost,
    SnapshotExists,
    SnapshotNotFound,
    VolumeBusy,
    VolumeExists,
    VolumeNotFound,
)
from loft.blockstore.heads import DEFAULT_LEASE_MARGIN, DEFAULT_LEASE_TTL, VolumeRecord
from loft.blockstore.names import split_ref
from loft.errors import LoftError
from loft.nbd.server import Authorizer, Export, NBDServer
from loft.node import api
from loft.node.apiserver import ApiServer
from loft.node.jsoncodec import CodecError
from loft.node.served import ServedVolume
from loft.node.volume_backend import VolumeBackend
from loft.units import format_size

log = logging.getLogger("loft.disk")


def default_socket(data_dir: Path) -> Path:
    """Where the NBD socket lives unless told otherwise (a root-only directory)."""
    return data_dir / "run" / "nbd.sock"


class CatalogExports:
    """The export set of the disk service: volumes and snapshots from the catalog."""

    blocking = True  # every lookup reads the catalog

    def __init__(self, service: DiskService) -> None:
        self._service = service
        self._exports: dict[str, Export] = {}
        #: what each export serves: the service opened it, so the service closes it
        self._targets: dict[str, ServedVolume | SnapshotView] = {}
        self._lock = threading.Lock()

    def lookup(self, name: str) -> Export | None:
        try:
            vol_name, snap = split_ref(name)
        except InvalidArgument:
            return None
        heads = self._service.blockstore.heads
        rec = heads.find(vol_name)
        with self._lock:
            export = self._exports.get(name)
            if rec is None:
                return None
            if export is not None:
                return export
        if snap is None:
            if self._service.held_elsewhere(rec):
                log.warning(
                    "nbd.refuse export=%s reason=%s",
                    name,
                    json.dumps(f"volume is in use by {rec.holder}"),
                )
                return None
            target: ServedVolume | SnapshotView = ServedVolume(
                rec.name, rec.size, rec.extent_size, self._service.open_volume
            )
            desc = f"volume {rec.name} ({format_size(rec.size)}, {rec.durability})"
        else:
            try:
                s = heads.get_snapshot(rec, snap)
            except SnapshotNotFound:
                return None
            target = SnapshotView(self._service.blockstore.ctx, rec, s.root, name)
            desc = f"snapshot {name} (read-only, version {s.version})"
        export = Export(name, VolumeBackend(target, description=desc), desc)
        with self._lock:
            if name not in self._exports:
                self._exports[name] = export
                self._targets[name] = target
            return self._exports[name]

    def exports(self) -> list[Export]:
        bs = self._service.blockstore
        names = []
        for rec in bs.volumes():
            names.append(rec.name)
            names += [f"{rec.name}@{s.name}" for s in bs.heads.snapshots(rec)]
        return [e for n in names if (e := self.lookup(n)) is not None]

    def served(self) -> list[ServedVolume]:
        """Volumes the service has an export object for (opened or not)."""
        with self._lock:
            return [t for t in self._targets.values() if isinstance(t, ServedVolume)]

    def served_volume(self, name: str) -> ServedVolume | None:
        """The read-write export of volume ``name``, when this service may serve it."""
        if self.lookup(name) is None:
            return None
        with self._lock:
            target = self._targets.get(name)
        return target if isinstance(target, ServedVolume) else None

    def close(self) -> None:
        with self._lock:
            targets = list(self._targets.items())
            self._exports.clear()
            self._targets.clear()
        for name, target in targets:
            try:
                # The service opened these volumes and views, so it closes them (the NBD
                # backend adapter does not own what it serves).
                target.close()
            except LoftError as err:
                log.error("disk.close export=%s error=%s", name, json.dumps(str(err)))


class DiskService:
    """NBD server + control socket over the volumes of one catalog and chunk store."""

    def __init__(
        self,
        blockstore: Blockstore,
        socket_path: Path,
        *,
        control_path: Path | None = None,
        authorizer: Authorizer | None = None,
        ssl_context: ssl.SSLContext | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        lease_margin: float = DEFAULT_LEASE_MARGIN,
    ) -> None:
        self.blockstore = blockstore
        self.socket_path = socket_path
        self.control_path = control_path or socket_path.with_name("control.sock")
        self.lease_ttl = lease_ttl
        self.lease_margin = lease_margin
        self.exports = CatalogExports(self)
        self.server = NBDServer(self.exports, authorizer=authorizer, ssl_context=ssl_context)
        self._holders: set[str] = set()
        self._api = ApiServer(self._run_operation, _status_of)
        self._control: asyncio.base_events.Server | None = None
        self._stopped = asyncio.Event()

    # -- volumes ------------------------------------------------------------------------

    def held_elsewhere(self, rec: VolumeRecord) -> bool:
        """True when another writer holds a live lease on the volume."""
        if rec.holder is None or rec.holder in self._holders:
            return False
        with self.blockstore.ctx.catalog.read() as conn:
            now = self.blockstore.ctx.catalog.now(conn)
        return (rec.lease_expires or 0) + self.lease_margin > now

    def open_volume(self, name: str) -> Volume:
        """Open a volume for serving: take its lease and publish our control socket."""
        vol = self.blockstore.open(name, lease_ttl=self.lease_ttl, lease_margin=self.lease_margin)
        self._holders.add(vol.holder)
        rec = vol.record
        self.blockstore.heads.set_control_socket(rec.id, rec.epoch, str(self.control_path))
        log.info("disk.open volume=%s epoch=%d version=%d", name, rec.epoch, rec.version)
        return vol

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, listen: tuple[str, int] | None = None) -> None:
        """Listen on the Unix socket (and on TCP with TLS when ``listen`` is given)."""
        await self.server.serve_unix(self.socket_path)
        if listen is not None:
            await self.server.serve_tcp(*listen)
        if self.control_path.exists():
            self.control_path.unlink()
        self._control = await asyncio.start_unix_server(self._api.handle, str(self.control_path))
        os.chmod(self.control_path, 0o600)
        log.info("disk.ready socket=%s control=%s", self.socket_path, self.control_path)

    def request_stop(self) -> None:
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        """Stop serving, then commit and release every volume."""
        log.info("disk.stopping")
        if self._control is not None:
            self._control.close()
        await self.server.close()
        await asyncio.get_running_loop().run_in_executor(None, self.exports.close)
        self.control_path.unlink(missing_ok=True)
        log.info("disk.stopped")

    # -- the node API ---------------------------------------------------------------------

    async def _run_operation(self, op: api.Operation, req: object) -> object:
        """Run one API request on a worker thread (volumes and the catalog block)."""
        served = self._served(getattr(req, "volume")) if op.needs_served else None  # noqa: B009
        handler = _HANDLERS[op.request]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, handler, self, req, served)

    def _served(self, volume: str) -> ServedVolume:
        sv = self.exports.served_volume(volume)
        if sv is None:
            raise NotServed(
                f"volume {volume!r} is not served here",
                hint="it is unknown, or another disk service holds it",
            )
        return sv

    def api_ping(self, req: api.PingRequest, _: None) -> api.PingAnswer:
        return api.PingAnswer([sv.name for sv in self.exports.served() if sv.volume is not None])

    def api_snapshot(self, req: api.SnapshotRequest, sv: ServedVolume) -> api.SnapshotAnswer:
        """Commit everything flushed (and written) so far, then record the snapshot."""
        rec = sv.get().commit()
        snap = self.blockstore.heads.add_snapshot(rec, req.name, rec.version, rec.root)
        log.info(
            "disk.snapshot volume=%s snapshot=%s version=%d", req.volume, req.name, snap.version
        )
        return api.SnapshotAnswer(snap.name, snap.version)

    def api_commit(self, req: api.CommitRequest, sv: ServedVolume) -> api.CommitAnswer:
        return api.CommitAnswer(sv.get().commit().version)

    def api_info(self, req: api.InfoRequest, sv: ServedVolume) -> api.InfoAnswer:
        info = self.blockstore.info(req.volume).as_dict()
        vol = sv.volume
        if vol is not None:
            info["extents_present"] = vol.present_extents
            info["extents_dirty"] = vol.dirty_extents
        return api.InfoAnswer(**info, served_by=str(self.control_path))  # type: ignore[arg-type]

    def api_import(self, req: api.ImportRequest, sv: ServedVolume) -> api.ImportAnswer:
        """Write a raw image file into a served volume through its live working copy."""
        vol = sv.get()
        started = time.monotonic()
        size = os.stat(req.path).st_size
        if size > vol.size:
            raise InvalidArgument(
                f"image is {size} bytes but volume {req.volume!r} is {vol.size} bytes",
                hint="create a bigger volume",
            )
        es = vol.extent_size
        with open(req.path, "rb") as f:
            offset = 0
            while chunk := f.read(es):
                vol.write(offset, chunk)
                offset += len(chunk)
        rec = vol.commit()
        return api.ImportAnswer(offset, time.monotonic() - started, rec.version)

    def api_connections(self, req: api.ConnectionsRequest, _: None) -> api.ConnectionsAnswer:
        return api.ConnectionsAnswer([api.ConnectionInfo(**c) for c in self.server.connections()])

    def api_release(self, req: api.ReleaseRequest, sv: ServedVolume) -> api.ReleaseAnswer:
        """Commit and release a volume (it is opened again on next use)."""
        sv.close()
        return api.ReleaseAnswer(req.volume)


class NotServed(LoftError):
    """The volume an operation names is not served by this disk service."""


def _status_of(e: LoftError) -> int:
    """The HTTP status of an error (4xx: the caller can act on it)."""
    if isinstance(e, NotServed | VolumeNotFound | SnapshotNotFound):
        return 404
    if isinstance(e, VolumeBusy | VolumeExists | SnapshotExists | LeaseLost):
        return 409
    if isinstance(e, InvalidArgument | CodecError):
        return 400
    return 500


_HANDLERS: dict[type, Callable[..., object]] = {
    api.PingRequest: DiskService.api_ping,
    api.SnapshotRequest: DiskService.api_snapshot,
    api.CommitRequest: DiskService.api_commit,
    api.InfoRequest: DiskService.api_info,
    api.ImportRequest: DiskService.api_import,
    api.ConnectionsRequest: DiskService.api_connections,
    api.ReleaseRequest: DiskService.api_release,
}
assert set(_HANDLERS) == {op.request for op in api.OPERATIONS}, "every operation has a handler"


__all__ = ["BlockstoreError", "CatalogExports", "DiskService", "NotServed", "default_socket"]
