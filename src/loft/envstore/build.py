"""The builder: realise artefacts into the store, compose environments, lock and build.

Realising an artefact is fetch -> verify -> fixed-output path -> sandboxed unpack ->
canonical tree -> NAR hash -> register. It runs in two phases so a bad artefact leaves
the store untouched: first every missing artefact is downloaded into scratch space,
checked against its pinned hash, unpacked in the jail, canonicalised and NAR-hashed
(pipelined per artefact, in parallel); only when all of them succeeded are they moved
into the store and registered together (one flush, one transaction: a
:meth:`~loft.envstore.store.Store.batch`). Paths already valid are never touched, so a
second build of a present lock only checks that the environment path is valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from loft.envstore import EnvstoreError
from loft.envstore.batch import Batch
from loft.envstore.certs import ca_hash_links
from loft.envstore.confined import Beneath
from loft.envstore.environment import (
    CA_SHARE,
    Layer,
    Placement,
    alternatives_layer,
    ca_bundle_layer,
    ca_certificates,
    maintainer_scripts,
    passwd_layer,
    plan_forest,
    provided_paths,
    write_forest,
    write_layer,
)
from loft.envstore.fetch import copy_local, download, verify_file
from loft.envstore.fields import MAX_ARTEFACT_SIZE
from loft.envstore.lock import Lock, LockedArtefact, LockedPath
from loft.envstore.pin import Pin, store_name
from loft.envstore.progress import (
    BuildProgress,
    BytesFetched,
    Task,
    TaskAdvanced,
    TasksFinished,
    TaskStarted,
)
from loft.envstore.realisations import ENV, ENV_NAME, LAYER, UNPACKER, Realisations, locked
from loft.envstore.resolve_debian import AptConfig, resolve_debian
from loft.envstore.resolve_npm import resolve_npm
from loft.envstore.resolve_pypi import PythonTarget, resolve_pypi
from loft.envstore.spec import Spec
from loft.envstore.store import Store
from loft.envstore.store_path import fixed_output_path
from loft.envstore.unpack import unpack

__all__ = [
    "ALWAYS_DEBIAN",
    "BuildError",
    "Builder",
    "Pin",
    "build_lock",
    "lock_spec",
    "resolve_spec",
    "store_name",
]

#: Debian packages every environment gets besides the Essential set: without the CA
#: certificates nothing in the environment can speak TLS.
ALWAYS_DEBIAN = ("ca-certificates",)
DEFAULT_JOBS = 8

T = TypeVar("T")


class BuildError(EnvstoreError):
    """A build could not finish, or did not reproduce what the lock says."""


@dataclass(frozen=True)
class _Staged:
    """An artefact after stage 1: verified bytes (and soon an unpacked tree)."""

    pin: Pin
    fixed: str  # its fixed-output store path
    file: Path  # where its bytes are now (the store's copy, or scratch)
    sha256: str
    fresh: bool  # not yet in the store
    tree: Path = Path()


class Builder:
    """Realises pins and composes environments in one store."""

    def __init__(
        self,
        store: Store,
        *,
        python_version: str = "3.11",
        jobs: int = DEFAULT_JOBS,
        mirrors: Sequence[Store] = (),
        progress: BuildProgress | None = None,
    ) -> None:
        self.store = store
        self.python_version = python_version
        self.jobs = jobs
        #: Other local stores to copy artefacts from before downloading them.
        self.mirrors = tuple(mirrors)
        #: Told what the build is doing (see :mod:`loft.envstore.progress`).
        self._progress: BuildProgress = progress or (lambda _event: None)
        self._lock = threading.Lock()
        self._bytes = 0

    # -- artefacts ------------------------------------------------------------------------

    def realise(self, pins: Sequence[Pin]) -> list[LockedArtefact]:
        """Make every pin's unpacked tree valid; return what each produced, in order.

        Stage 1, per artefact and pipelined: fetch (or find in the store or a mirror),
        verify, unpack into scratch space, canonicalise and hash. Stage 2, only once all
        of stage 1 succeeded: move the fetched files and the unpacked trees into the
        store, flush once and register them in one transaction. So a tampered or refused
        artefact leaves the store exactly as it was.
        """
        done: dict[int, LockedArtefact] = {}
        todo: list[int] = []
        known: Realisations | None = None
        for i, pin in enumerate(pins):
            exp = pin.expected
            if exp is not None and self.store.is_valid(exp.output.path):
                done[i] = exp
                continue
            if exp is None:  # resolved just now: maybe unpacked by an earlier build
                known = known or Realisations.scan(self.store)
                hit = known.find(pin, self._unpack_recipe(pin, ""))
                if hit is not None:
                    done[i] = hit
                    continue
            todo.append(i)
        if not todo:
            return [done[i] for i in range(len(pins))]
        # The batch registers on leaving the block, so only when every artefact of
        # stage 1 succeeded: one flush and one transaction for all of them.
        with self._tasks(), self.store.tmpdir() as scratch, self.store.batch() as batch:
            fetching = sum(1 for i in todo if not self._in_store(pins[i]))
            dl: Task = "downloading"
            up: Task = "unpacking"
            self._progress(TaskStarted(dl, fetching))
            self._progress(TaskStarted(up, len(todo)))
            self._bytes = 0

            def stage1(k: int) -> LockedArtefact:
                staged = self._fetch(pins[todo[k]], scratch / f"dl-{k}", dl)
                extra = staged.pin.name if staged.pin.kind == "deb" else self.python_version
                tree = scratch / f"tree-{k}"
                unpack(staged.pin.kind, staged.file, tree, staged.pin.what, extra)
                got = self._add(batch, replace(staged, tree=tree))
                self._progress(TaskAdvanced(up))
                return got

            for k, res in enumerate(self._parallel(stage1, range(len(todo)))):
                done[todo[k]] = res
        return [done[i] for i in range(len(pins))]

    def _fetch(self, pin: Pin, dest: Path, task: Task) -> _Staged:
        """The verified artefact: the store's copy if valid, else a mirror's or a download."""
        fixed = self._fixed_path(pin)
        if fixed and self.store.is_valid(fixed):
            return _Staged(pin, fixed, self.store.physical(fixed), pin.file_sha256, False)
        src = self._from_mirror(fixed)
        if src is not None:
            copy_local(src, dest)
        else:
            # A lock's size (or the Packages index's) bounds the download; without one,
            # the global cap does: no artefact can fill the scratch space.
            limit = pin.size or MAX_ARTEFACT_SIZE
            download(pin.url, dest, pin.what, lambda n: self._count_bytes(task, n), limit)
        self._progress(TaskAdvanced(task))
        sha = verify_file(dest, pin.what, sha256=pin.file_sha256, integrity=pin.integrity)
        return _Staged(pin, fixed_output_path(sha, pin.file_name), dest, sha, True)

    def _in_store(self, pin: Pin) -> bool:
        fixed = self._fixed_path(pin)
        return bool(fixed) and self.store.is_valid(fixed)

    def _count_bytes(self, task: Task, n: int) -> None:
        with self._lock:
            self._bytes += n
            self._progress(BytesFetched(task, self._bytes))

    @contextmanager
    def _tasks(self) -> Iterator[None]:
        """Around stage 1 and its commit: the tasks end when it does, failed or not."""
        try:
            yield
        finally:
            self._progress(TasksFinished())

    def _fixed_path(self, pin: Pin) -> str:
        if pin.file_sha256:
            return fixed_output_path(pin.file_sha256, pin.file_name)
        return ""

    def _from_mirror(self, fixed: str) -> Path | None:
        for m in self.mirrors:
            if fixed and m.is_valid(fixed):
                return m.physical(fixed)
        return None

    def _add(self, batch: Batch, st: _Staged) -> LockedArtefact:
        """Stage an artefact: its file as a fixed output, its tree as a source (hashed now,
        registered when the batch commits)."""
        pin = st.pin
        size = st.file.stat().st_size
        if st.fresh:
            recipe: dict[str, object] = {"url": pin.url, "hash": pin.registry_hash}
            batch.add_fixed_file(st.file, pin.file_name, st.sha256, recipe=recipe)
        recipe2 = self._unpack_recipe(pin, st.fixed)
        out = batch.add_tree(st.tree, pin.out_name, recipe=recipe2)
        got = LockedArtefact(
            kind=pin.kind, name=pin.name, version=pin.version, url=pin.url,
            registry_hash=pin.registry_hash, file_sha256=st.sha256, file_name=pin.file_name,
            fixed_path=st.fixed, output=locked(out, pin.out_name), location=pin.location,
            bin=dict(pin.bin), size=size,
        )  # fmt: skip
        exp = pin.expected
        if exp is not None and (got.output.path, got.fixed_path) != (
            exp.output.path,
            exp.fixed_path,
        ):
            raise BuildError(
                f"{pin.what}: unpacked to {got.output.path}, the lock says {exp.output.path}",
                hint="the build is not reproducible here, or the lock was edited",
            )
        if exp is not None and exp.size and exp.size != size:
            raise BuildError(
                f"{pin.what}: the file is {size} bytes, the lock says {exp.size}",
                hint="the lock was edited",
            )
        return got

    def _unpack_recipe(self, pin: Pin, fixed: str) -> dict[str, object]:
        """How a tree was made: everything its content depends on besides the artefact."""
        recipe: dict[str, object] = {"builder": UNPACKER, "kind": pin.kind, "from": fixed}
        if pin.kind == "wheel":
            recipe["python"] = self.python_version
        return recipe

    def _parallel(self, fn: Callable[[int], T], items: Iterable[int]) -> list[T]:
        """Run ``fn`` over ``items`` on the pool; the first failure cancels the rest."""
        items = list(items)
        with ThreadPoolExecutor(max_workers=max(1, self.jobs)) as pool:
            futures: list[Future[T]] = [pool.submit(fn, i) for i in items]
            _finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                if f.done() and f.exception() is not None:
                    for g in futures:
                        g.cancel()
                    exc = f.exception()
                    assert exc is not None
                    raise exc
            return [f.result() for f in futures]

    # -- environments ---------------------------------------------------------------------

    def compose(self, artefacts: Sequence[LockedArtefact]) -> tuple[list[LockedPath], LockedPath]:
        """Generate the maintainer-script layers and the environment's symlink forest.

        Both are functions of the package paths alone, so their recipes record a key of
        those inputs; when the store already holds an environment made from the same
        inputs, it is returned without writing a single file.
        """
        key = _compose_key(artefacts)
        found = Realisations.scan(self.store).composed(key)
        if found is not None:
            return found
        debs = sorted((a for a in artefacts if a.kind == "deb"), key=lambda a: a.name)
        wheels = sorted((a for a in artefacts if a.kind == "wheel"), key=lambda a: a.name)
        npms = sorted((a for a in artefacts if a.kind == "npm"), key=lambda a: a.location)
        phys = {a.output.path: self.store.physical(a.output.path) for a in artefacts}
        packages = [Placement(a.output.path, phys[a.output.path]) for a in debs + wheels]
        packages += [
            Placement(a.output.path, phys[a.output.path], at=f"lib/{a.location}") for a in npms
        ]
        by_name = {a.name: phys[a.output.path] for a in debs}
        layers: list[LockedPath] = []
        generated: list[Placement] = []
        # Layers and environment are registered together when the batch commits; until
        # then the layers are read where they were written.
        with self.store.tmpdir() as scratch, self.store.batch() as batch:
            gen: list[Layer] = [passwd_layer(by_name.get("base-passwd"))]
            if "ca-certificates" in by_name:
                ca = by_name["ca-certificates"]
                certs = ca_certificates(ca)
                gen.append(ca_bundle_layer(ca, ca_hash_links(ca / CA_SHARE, certs, scratch)))
            scripts = {
                f"{a.what}: {name}": text
                for a in debs
                for name, text in maintainer_scripts(phys[a.output.path]).items()
            }
            gen.append(alternatives_layer(scripts, provided_paths(packages)))
            for k, layer in enumerate(gen):
                tree = scratch / f"layer-{k}"
                tree.mkdir()
                write_layer(layer, tree)
                recipe = {"builder": LAYER, "inputs": key, "order": k}
                info = batch.add_tree(tree, layer.name, recipe=recipe)
                layers.append(locked(info, layer.name))
                generated.append(Placement(info.path, tree))
            forest = plan_forest([*generated, *packages], reserved=[MANIFEST])
            _add_bin_links(forest, npms)
            tree = scratch / "env"
            tree.mkdir()
            write_forest(forest, tree, [p.store_path for p in [*generated, *packages]])
            _write_manifest(tree, artefacts, layers)
            refs = [a.output.path for a in artefacts] + [lp.path for lp in layers]
            info = batch.add_tree(
                tree, ENV_NAME, references_from=refs, recipe={"builder": ENV, "inputs": key}
            )
        return layers, locked(info, ENV_NAME)


def _compose_key(artefacts: Sequence[LockedArtefact]) -> str:
    """A digest of everything an environment is composed from."""
    parts = sorted((a.kind, a.location, a.output.path, json.dumps(a.bin, sort_keys=True))
                   for a in artefacts)  # fmt: skip
    return hashlib.sha256(json.dumps([ENV, LAYER, parts]).encode()).hexdigest()


def _add_bin_links(forest: dict[str, str | None], npms: Sequence[LockedArtefact]) -> None:
    """``bin/<name>`` for each top-level npm package's bins, as npm -g would link them."""
    if forest.get("bin") is not None:
        return  # only one package has a bin/ directory and it is a link: leave it whole
    forest.setdefault("bin", None)
    for a in npms:
        if a.location.count("node_modules/") != 1:
            continue
        for name, rel in sorted(a.bin.items()):
            if "/" in name or name.startswith("."):
                continue
            link = f"bin/{name}"
            if link not in forest:
                forest[link] = os.path.normpath(f"../lib/{a.location}/{rel}")


#: Inside an environment: what it is made of (also makes every part a scanned reference).
MANIFEST = "share/loft/env.json"


def _write_manifest(
    tree: Path, artefacts: Sequence[LockedArtefact], layers: Sequence[LockedPath]
) -> None:
    doc = {
        "packages": [
            {"kind": a.kind, "name": a.name, "version": a.version, "path": a.output.path}
            for a in sorted(artefacts, key=lambda a: (a.kind, a.name, a.location))
        ],
        "layers": [{"name": lp.name, "path": lp.path} for lp in layers],
    }
    with Beneath(tree) as out:
        out.write_file(MANIFEST, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())


# -- the two entry points -----------------------------------------------------------------


def resolve_spec(
    spec: Spec, store: Store, *, refresh: bool = False
) -> tuple[list[Pin], dict[str, str]]:
    """Resolve every registry in parallel; return the pins and the platform they are for.

    ``refresh`` downloads fresh Debian indexes first (``apt-get update``).
    """
    debian = list(dict.fromkeys([*spec.debian, *ALWAYS_DEBIAN]))
    if spec.npm and "nodejs" not in debian:
        debian.append("nodejs")
    # The apt indexes are a cache, not store state: LOFT_APT_STATE lets several stores
    # (tests, benchmarks) share one copy.
    apt = AptConfig.for_host(Path(os.environ.get("LOFT_APT_STATE") or store.root / "apt"))
    target = PythonTarget.debian()
    if refresh:
        apt.prepare()
        apt.update()
    with ThreadPoolExecutor(max_workers=3) as pool:
        fd = pool.submit(resolve_debian, debian, apt)
        fp = pool.submit(resolve_pypi, list(spec.pypi), target)
        fn = pool.submit(resolve_npm, list(spec.npm))
        pins = [Pin.from_debian(a) for a in fd.result()]
        pins += [Pin.from_pypi(a) for a in fp.result()]
        pins += [Pin.from_npm(a) for a in fn.result()]
    platform = {"suite": apt.suite, "arch": apt.arch, "python": target.version}
    return pins, platform


def lock_spec(
    spec: Spec,
    store: Store,
    *,
    mirrors: Sequence[Store] = (),
    jobs: int = 0,
    refresh: bool = False,
    progress: BuildProgress | None = None,
) -> Lock:
    """Resolve, realise and compose ``spec``; the lock records every hash it produced."""
    pins, platform = resolve_spec(spec, store, refresh=refresh)
    builder = Builder(
        store,
        python_version=platform["python"],
        mirrors=mirrors,
        jobs=jobs or DEFAULT_JOBS,
        progress=progress,
    )
    artefacts = builder.realise(pins)
    layers, env = builder.compose(artefacts)
    return Lock(spec=spec, platform=platform, artefacts=tuple(artefacts), layers=tuple(layers),
                env=env)  # fmt: skip


def build_lock(
    lock: Lock,
    store: Store,
    *,
    mirrors: Sequence[Store] = (),
    jobs: int = 0,
    progress: BuildProgress | None = None,
) -> LockedPath:
    """Realise ``lock`` exactly; a lock whose environment is already valid costs one query."""
    if store.is_valid(lock.env.path):
        store.add_temp_root(lock.env.path)  # valid now, and kept so while we live
        if store.is_valid(lock.env.path):
            return lock.env
    builder = Builder(
        store,
        python_version=lock.platform.get("python", "3.11"),
        mirrors=mirrors,
        jobs=jobs or DEFAULT_JOBS,
        progress=progress,
    )
    artefacts = builder.realise([Pin.from_lock(a) for a in lock.artefacts])
    layers, env = builder.compose(artefacts)
    if [lp.path for lp in layers] != [lp.path for lp in lock.layers] or env.path != lock.env.path:
        raise BuildError(
            f"the environment built to {env.path}, the lock says {lock.env.path}",
            hint="the build is not reproducible here, or the lock was edited",
        )
    return replace(env, name=lock.env.name)
