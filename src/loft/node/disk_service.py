"""The disk service: every volume of the catalog served over NBD by one process.

Exports are ``NAME`` (the volume, read-write; the service takes its lease on first use
and keeps it while it runs) and ``NAME@SNAP`` (a read-only view of a snapshot). All
connections to one volume share one :class:`Volume`, so CAN_MULTI_CONN holds. While a
volume is served, its catalog row names this service's control socket, where the node
API (:mod:`loft.node.api`) answers: the CLI snapshots, inspects and imports into a served
volume through it.

Two NBD listeners serve the same volumes: ``nbd.sock`` (and TCP) for every client, whose
writes are raw (they flag the volume, :mod:`loft.node.raw_writes`), and ``attach.sock``
for the runtime's attachments of workspace filesystems, which offers only volumes never
written raw, and lists nothing.

SIGTERM or SIGINT: stop listening, let connections finish, then commit and release every
volume.

A little over 500 lines because it is the one owner of which volume is served by whom:
the two export tables and the operations of the node API that must see them together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loft.blockstore import Blockstore, SnapshotView, Volume
from loft.blockstore.api import open_image
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
from loft.blockstore.heads import (
    DEFAULT_LEASE_MARGIN,
    DEFAULT_LEASE_TTL,
    SnapshotRecord,
    VolumeRecord,
    lease_held,
)
from loft.blockstore.holder import describe
from loft.blockstore.names import split_ref
from loft.errors import LoftError
from loft.nbd.server import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    Authorizer,
    Export,
    NBDServer,
)
from loft.node import api
from loft.node.apiserver import ApiServer
from loft.node.jsoncodec import CodecError
from loft.node.raw_writes import RawWrites, WriteOrigin
from loft.node.served import ServedVolume
from loft.node.volume_backend import VolumeBackend
from loft.telemetry import CHUNK_STORE, NBD
from loft.units import format_size

log = logging.getLogger("loft.disk")


def default_socket(data_dir: Path) -> Path:
    """Where the NBD socket lives unless told otherwise (a root-only directory)."""
    return data_dir / "run" / "nbd.sock"


def attach_socket(nbd_socket: Path) -> Path:
    """The attachment socket beside an NBD socket (see :mod:`loft.node.raw_writes`)."""
    return nbd_socket.with_name("attach.sock")


@dataclass(frozen=True, slots=True)
class _Entry:
    """One export the service built: what it serves, and which volume (by uid) and
    snapshot (by id) the name meant when it was built. A volume has a second export,
    for attachments, over the same served volume."""

    key: tuple[str, int | None]
    export: Export
    target: ServedVolume | SnapshotView
    attachment: Export | None = None
    origin: WriteOrigin | None = None


class CatalogExports:
    """The export set of the disk service: volumes and snapshots from the catalog.

    A name is looked up in the catalog every time (NBD looks exports up only in the
    handshake); the export built for it is reused only while the name still means the
    same volume (uid) or snapshot (id). A removed snapshot, or a volume removed and
    created again under its old name, is never served from a stale export."""

    blocking = True  # every lookup reads the catalog

    def __init__(self, service: DiskService) -> None:
        self._service = service
        self._entries: dict[str, _Entry] = {}
        #: volumes an operation (restore, rm) has taken away from NBD for its duration
        self._withheld: set[str] = set()
        self._lock = threading.Lock()

    def lookup(self, name: str, *, attachment: bool = False) -> Export | None:
        """The export called ``name``; with ``attachment``, the attachment export of a
        volume never written raw (claiming the volume for attachments), else None."""
        try:
            vol_name, snap = split_ref(name)
        except InvalidArgument:
            return None
        if attachment and snap is not None:
            return None
        heads = self._service.blockstore.heads
        rec = heads.find(vol_name)
        s = None
        if rec is not None and snap is not None:
            try:
                s = heads.get_snapshot(rec, snap)
            except SnapshotNotFound:
                rec = None
        if rec is None:
            self.drop(name)
            return None
        entry = self._entry(name, rec, s)
        if entry is None or not attachment:
            return None if entry is None else entry.export
        assert entry.origin is not None
        try:
            if rec.raw_written:  # flagged since the export was built (an import)
                raise VolumeBusy(f"volume {rec.name!r} was written raw")
            entry.origin.attach()
        except VolumeBusy as e:
            log.warning("nbd.refuse export=%s reason=%s", name, json.dumps(str(e)))
            return None
        return entry.attachment

    def _export(self, name: str, rec: VolumeRecord, s: SnapshotRecord | None) -> Export | None:
        entry = self._entry(name, rec, s)
        return None if entry is None else entry.export

    def _entry(self, name: str, rec: VolumeRecord, s: SnapshotRecord | None) -> _Entry | None:
        key = (rec.uid, s.id if s is not None else None)
        with self._lock:
            if rec.name in self._withheld:
                return None
            entry = self._entries.get(name)
        if entry is not None:
            if entry.key == key:
                return entry
            self.drop(name)  # the name means another volume or snapshot now
        if s is None:
            if self._service.held_elsewhere(rec):
                log.warning(
                    "nbd.refuse export=%s reason=%s",
                    name,
                    json.dumps(f"volume is in use by {describe(rec.holder or '')}"),
                )
                return None
            served = ServedVolume(
                rec.name, rec.uid, rec.size, rec.extent_size, self._service.open_volume
            )
            heads = self._service.blockstore.heads
            origin = WriteOrigin(rec.name, rec.raw_written, lambda: heads.mark_raw_written(rec.id))
            desc = f"volume {rec.name} ({format_size(rec.size)}, {rec.durability})"
            built = _Entry(
                key,
                Export(name, VolumeBackend(RawWrites(served, origin), description=desc), desc),
                served,
                Export(name, VolumeBackend(served, description=desc), desc),
                origin,
            )
        else:
            view = SnapshotView(self._service.blockstore.ctx, rec, s.root, name)
            desc = f"snapshot {name} (read-only, version {s.version})"
            built = _Entry(key, Export(name, VolumeBackend(view, description=desc), desc), view)
        with self._lock:
            entry = self._entries.setdefault(name, built)
        if entry is not built:
            built.target.close()  # another lookup got there first; this one was never used
        return entry

    def drop(self, name: str) -> None:
        """Forget the export called ``name`` (closing what it served); the next lookup
        builds it afresh from the catalog."""
        with self._lock:
            entry = self._entries.pop(name, None)
        if entry is not None:
            _close_target(name, entry.target)

    def drop_volume(self, volume: str) -> None:
        """Forget the exports of a volume and of all its snapshots."""
        with self._lock:
            names = [n for n in self._entries if n == volume or n.startswith(volume + "@")]
        for n in names:
            self.drop(n)

    @contextlib.contextmanager
    def withheld(self, volume: str) -> Iterator[None]:
        """While the block runs, no new client gets an export of ``volume`` or of its
        snapshots (restore and rm run without racing a new connection)."""
        with self._lock:
            if volume in self._withheld:
                raise VolumeBusy(f"volume {volume!r} is being restored or removed")
            self._withheld.add(volume)
        try:
            yield
        finally:
            with self._lock:
                self._withheld.discard(volume)

    def exports(self) -> list[Export]:
        bs = self._service.blockstore
        out = []
        for rec in bs.volumes():
            for name, s in [
                (rec.name, None),
                *((f"{rec.name}@{s.name}", s) for s in bs.heads.snapshots(rec)),
            ]:
                export = self._export(name, rec, s)
                if export is not None:
                    out.append(export)
        return out

    def served(self) -> list[ServedVolume]:
        """Volumes the service has an export object for (opened or not)."""
        with self._lock:
            targets = [e.target for e in self._entries.values()]
        return [t for t in targets if isinstance(t, ServedVolume)]

    def served_volume(self, name: str) -> ServedVolume | None:
        """The read-write export of volume ``name``, when this service may serve it."""
        if self.lookup(name) is None:
            return None
        with self._lock:
            entry = self._entries.get(name)
        target = entry.target if entry is not None else None
        return target if isinstance(target, ServedVolume) else None

    def write_origin(self, name: str) -> WriteOrigin | None:
        """Who writes volume ``name`` (attachment or raw), once it is served."""
        with self._lock:
            entry = self._entries.get(name)
        return entry.origin if entry is not None else None

    def close(self) -> None:
        with self._lock:
            entries = list(self._entries.items())
            self._entries.clear()
        for name, entry in entries:
            _close_target(name, entry.target)


class AttachmentExports:
    """The export set of the attachment socket: each volume's attachment export, and no
    listing (an attachment names its volume; NBD LIST there shows nothing)."""

    blocking = True

    def __init__(self, exports: CatalogExports) -> None:
        self._exports = exports

    def lookup(self, name: str) -> Export | None:
        return self._exports.lookup(name, attachment=True)

    def exports(self) -> list[Export]:
        return []


def _close_target(name: str, target: ServedVolume | SnapshotView) -> None:
    """Close what an export served: the service opened these volumes and views, so it
    closes them (the NBD backend adapter does not own what it serves)."""
    try:
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
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_bytes_in_flight: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.blockstore = blockstore
        self.socket_path = socket_path
        self.control_path = control_path or socket_path.with_name("control.sock")
        self.attach_path = attach_socket(socket_path)
        self.lease_ttl = lease_ttl
        self.lease_margin = lease_margin
        self.exports = CatalogExports(self)
        self.server = NBDServer(
            self.exports,
            authorizer=authorizer,
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_bytes_in_flight=max_bytes_in_flight,
        )
        self.attach_server = NBDServer(AttachmentExports(self.exports))
        self._holders: set[str] = set()
        self._api = ApiServer(self._run_operation, _status_of)
        self._control: asyncio.base_events.Server | None = None
        self._stopped = asyncio.Event()

    # -- volumes ------------------------------------------------------------------------

    def held_elsewhere(self, rec: VolumeRecord) -> bool:
        """True when another writer holds a live lease on the volume (a dead process of
        this node holds none: the takeover reclaims its lease at once)."""
        if rec.holder is None or rec.holder in self._holders:
            return False
        with self.blockstore.ctx.catalog.read() as conn:
            now = self.blockstore.ctx.catalog.now(conn)
        return lease_held(rec, now, self.lease_margin)

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
        """Listen on the Unix sockets (and on TCP with TLS when ``listen`` is given). The
        control socket comes last: once it exists, every listener is up."""
        await self.server.serve_unix(self.socket_path)
        await self.attach_server.serve_unix(self.attach_path)
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
        await asyncio.gather(self.server.close(), self.attach_server.close())
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

    def api_stats(self, req: api.StatsRequest, _: None) -> api.StatsAnswer:
        return api.StatsAnswer(NBD.report(), CHUNK_STORE.report())

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
            info["extents_corrupt"] = vol.corrupt_extents
            info["commit_lag_s"] = round(vol.commit_lag, 3)
            info["commit_lag_max_s"] = round(vol.max_commit_lag, 3)
        return api.InfoAnswer(**info, served_by=str(self.control_path))  # type: ignore[arg-type]

    def api_import(self, req: api.ImportRequest, sv: ServedVolume) -> api.ImportAnswer:
        """Import a raw image file into a served volume. The image streams to the chunk
        store and the head moves once, at the end (then the working copy drops what it
        replaced), so a refused or failed import leaves the volume as it was."""
        vol = sv.get()
        started = time.monotonic()
        origin = self.exports.write_origin(req.volume)
        if origin is not None:  # an import is a raw write: refused while attached
            origin.raw_write()
        with open_image(req.path) as (f, size):
            if size > vol.size:
                raise InvalidArgument(
                    f"image is {size} bytes but volume {req.volume!r} is {vol.size} bytes",
                    hint="create a bigger volume",
                )
            res = vol.import_image(f)
        return api.ImportAnswer(size, time.monotonic() - started, res.record.version)

    def api_connections(self, req: api.ConnectionsRequest, _: None) -> api.ConnectionsAnswer:
        return api.ConnectionsAnswer([api.ConnectionInfo(**c) for c in self.connections()])

    def connections(self) -> list[dict[str, Any]]:
        """Every live NBD connection, of both listeners."""
        return self.server.connections() + self.attach_server.connections()

    def api_release(self, req: api.ReleaseRequest, sv: ServedVolume) -> api.ReleaseAnswer:
        """Commit and release a volume (it is opened again on next use)."""
        self.exports.drop(req.volume)
        return api.ReleaseAnswer(req.volume)

    def api_restore(self, req: api.RestoreRequest, sv: ServedVolume) -> api.RestoreAnswer:
        """Restore a served volume that no client is using: commit and release it, then
        restore (undoably) as the CLI would; it is opened again on next use."""
        with self.exports.withheld(req.volume):
            self._refuse_if_connected(req.volume, "restore", snapshots=False)
            self.exports.drop(req.volume)
            rec, auto = self.blockstore.restore(req.volume, req.snapshot)
        log.info("disk.restore volume=%s snapshot=%s undo=%s", req.volume, req.snapshot, auto)
        return api.RestoreAnswer(rec.version, auto)

    def api_remove(self, req: api.RemoveRequest, sv: ServedVolume) -> api.RemoveAnswer:
        """Remove a served volume that no client is using (of it or its snapshots)."""
        with self.exports.withheld(req.volume):
            self._refuse_if_connected(req.volume, "remove", snapshots=True)
            self.exports.drop_volume(req.volume)
            self.blockstore.remove(req.volume)
        log.info("disk.remove volume=%s", req.volume)
        return api.RemoveAnswer(req.volume)

    def _refuse_if_connected(self, volume: str, what: str, *, snapshots: bool) -> None:
        """VolumeBusy naming the clients connected to the volume (or its snapshots)."""
        users = [
            c
            for c in self.connections()
            if c["export"] == volume
            or (snapshots and str(c["export"] or "").startswith(volume + "@"))
        ]
        if users:
            who = ", ".join(f"{c['peer']} on {c['export']}" for c in users)
            raise VolumeBusy(
                f"cannot {what} volume {volume!r}: {len(users)} client(s) connected ({who})",
                hint="disconnect them first; `loft disk ls-connections` shows them",
            )


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
    api.StatsRequest: DiskService.api_stats,
    api.SnapshotRequest: DiskService.api_snapshot,
    api.CommitRequest: DiskService.api_commit,
    api.InfoRequest: DiskService.api_info,
    api.ImportRequest: DiskService.api_import,
    api.ConnectionsRequest: DiskService.api_connections,
    api.ReleaseRequest: DiskService.api_release,
    api.RestoreRequest: DiskService.api_restore,
    api.RemoveRequest: DiskService.api_remove,
}
assert set(_HANDLERS) == {op.request for op in api.DISK_API.operations}, (
    "every operation has a handler"
)


__all__ = [
    "AttachmentExports",
    "BlockstoreError",
    "CatalogExports",
    "DiskService",
    "NotServed",
    "attach_socket",
    "default_socket",
]
