"""The disk service: every volume of the catalog served over NBD by one process.

Exports are ``NAME`` (the volume, read-write; the service takes its lease on first use
and keeps it while it runs) and ``NAME@SNAP`` (a read-only view of a snapshot). All
connections to one volume share one :class:`Volume`, so CAN_MULTI_CONN holds. While a
volume is served, its catalog row names this service's control socket, through which the
CLI snapshots, inspects and imports into it (see :mod:`loft.node.control`).

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
from typing import Any

from loft.blockstore import Blockstore, SnapshotView, Volume
from loft.blockstore.errors import BlockstoreError, InvalidArgument, SnapshotNotFound
from loft.blockstore.heads import DEFAULT_LEASE_MARGIN, DEFAULT_LEASE_TTL, VolumeRecord
from loft.blockstore.names import split_ref
from loft.errors import LoftError
from loft.nbd.server import Authorizer, Export, NBDServer
from loft.node.control import MAX_LINE
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
            backend_target: Any = ServedVolume(
                rec.name, rec.size, rec.extent_size, self._service.open_volume
            )
            desc = f"volume {rec.name} ({format_size(rec.size)}, {rec.durability})"
        else:
            try:
                s = heads.get_snapshot(rec, snap)
            except SnapshotNotFound:
                return None
            backend_target = SnapshotView(self._service.blockstore.ctx, rec, s.root, name)
            desc = f"snapshot {name} (read-only, version {s.version})"
        export = Export(name, VolumeBackend(backend_target, description=desc), desc)
        with self._lock:
            return self._exports.setdefault(name, export)

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
            backends = [e.backend for e in self._exports.values()]
        return [t for b in backends if isinstance(t := getattr(b, "volume", None), ServedVolume)]

    def served_volume(self, name: str) -> ServedVolume | None:
        export = self.lookup(name)
        target = getattr(export.backend, "volume", None) if export else None
        return target if isinstance(target, ServedVolume) else None

    def close(self) -> None:
        with self._lock:
            exports = list(self._exports.values())
            self._exports.clear()
        for e in exports:
            try:
                # The service opened these volumes and views, so it closes them (the NBD
                # backend adapter does not own what it serves).
                target = getattr(e.backend, "volume", None)
                if target is not None:
                    target.close()
            except LoftError as err:
                log.error("disk.close export=%s error=%s", e.name, json.dumps(str(err)))


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
        self._control = await asyncio.start_unix_server(
            self._handle_control, str(self.control_path), limit=MAX_LINE
        )
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

    # -- control socket -----------------------------------------------------------------

    async def _handle_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            req = json.loads(line)
            op = req.pop("op")
            handler = _HANDLERS.get(op)
            if handler is None:
                raise InvalidArgument(f"unknown control request {op!r}")
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(None, lambda: handler(self, **req))
            answer: dict[str, Any] = {"ok": True, **result}
        except LoftError as e:
            answer = {"ok": False, "error": e.message, "hint": e.hint}
        except (ValueError, KeyError, TypeError, TimeoutError) as e:
            answer = {"ok": False, "error": f"bad control request: {e}"}
        except Exception as e:  # never let one request kill the service
            log.exception("disk.control.error")
            answer = {"ok": False, "error": f"internal error: {e}"}
        try:
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
            writer.close()
        except (ConnectionError, OSError):
            pass

    def _served(self, volume: str) -> ServedVolume:
        sv = self.exports.served_volume(volume)
        if sv is None:
            raise InvalidArgument(f"volume {volume!r} is not served here")
        return sv

    def ctl_ping(self) -> dict[str, Any]:
        return {"served": [sv.name for sv in self.exports.served() if sv.volume is not None]}

    def ctl_snapshot(self, volume: str, name: str) -> dict[str, Any]:
        """Commit everything flushed (and written) so far, then record the snapshot."""
        vol = self._served(volume).get()
        rec = vol.commit()
        snap = self.blockstore.heads.add_snapshot(rec, name, rec.version, rec.root)
        log.info("disk.snapshot volume=%s snapshot=%s version=%d", volume, name, snap.version)
        return {"snapshot": snap.name, "version": snap.version}

    def ctl_commit(self, volume: str) -> dict[str, Any]:
        rec = self._served(volume).get().commit()
        return {"version": rec.version}

    def ctl_info(self, volume: str) -> dict[str, Any]:
        sv = self._served(volume)
        info = self.blockstore.info(volume).as_dict()
        vol = sv.volume
        if vol is not None:
            info["extents_present"] = vol.present_extents
            info["extents_dirty"] = vol.dirty_extents
        info["served_by"] = str(self.control_path)
        return info

    def ctl_import(self, volume: str, path: str) -> dict[str, Any]:
        """Write a raw image file into a served volume through its live working copy."""
        vol = self._served(volume).get()
        started = time.monotonic()
        size = os.stat(path).st_size
        if size > vol.size:
            raise InvalidArgument(
                f"image is {size} bytes but volume {volume!r} is {vol.size} bytes",
                hint="create a bigger volume",
            )
        es = vol.extent_size
        with open(path, "rb") as f:
            offset = 0
            while chunk := f.read(es):
                vol.write(offset, chunk)
                offset += len(chunk)
        rec = vol.commit()
        return {"bytes": offset, "seconds": time.monotonic() - started, "version": rec.version}

    def ctl_connections(self) -> dict[str, Any]:
        return {"connections": self.server.connections()}

    def ctl_release(self, volume: str) -> dict[str, Any]:
        """Commit and release a volume (it is opened again on next use)."""
        self._served(volume).close()
        return {"released": volume}


_HANDLERS: dict[str, Callable[..., dict[str, Any]]] = {
    "ping": DiskService.ctl_ping,
    "snapshot": DiskService.ctl_snapshot,
    "commit": DiskService.ctl_commit,
    "info": DiskService.ctl_info,
    "import": DiskService.ctl_import,
    "connections": DiskService.ctl_connections,
    "release": DiskService.ctl_release,
}


__all__ = ["BlockstoreError", "CatalogExports", "DiskService", "default_socket"]
