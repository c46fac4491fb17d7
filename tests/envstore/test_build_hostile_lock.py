"""A hostile lock (and the packages it pins) cannot make a build write, or read, outside.

Every artefact here is built in memory and served from loopback; each test points what a
package ships at an ``outside`` directory and checks both the error and that ``outside``
is exactly as it was, and that the build's scratch space is gone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hostile_support import (
    Server,
    data_members,
    deb_pin,
    entries,
    lock_of,
    npm_pin,
    npm_tarball,
    serve,
)
from tar_support import deb_bytes

from loft.envstore.build import Builder, Pin, build_lock
from loft.envstore.confined import ConfinementError
from loft.envstore.environment import AlternativesError, ForestConflict
from loft.envstore.store import Store

pytestmark = pytest.mark.timeout(120)


@dataclass
class Scene:
    server: Server
    store: Store
    outside: Path  # what hostile packages point at; must stay as it was

    def assert_untouched(self, before: list[str] | None = None) -> None:
        assert entries(self.outside) == (before or [])
        assert os.listdir(self.store.root / "tmp") == []  # the scratch space is gone


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    (tmp_path / "outside").mkdir()
    with serve() as server:
        yield Scene(server, Store(tmp_path / "envstore", durable=False), tmp_path / "outside")


# -- npm: a package placed below another package's symlink ---------------------------------


def nested(scene: Scene, a_files: dict[str, bytes | str]) -> list[Pin]:
    """Package a (shipping ``a_files``) and package b placed inside a's node_modules."""
    a = npm_tarball({"index.js": b"a", **a_files})
    return [
        npm_pin(scene.server, "a", "node_modules/a", a),
        npm_pin(scene.server, "b", "node_modules/a/node_modules/b", npm_tarball({})),
    ]


def test_build_npm_placed_through_node_modules_symlink_refused(
    scene: Scene, tmp_path: Path
) -> None:
    lock = lock_of(scene.store, nested(scene, {"node_modules": str(scene.outside)}))
    # Built from the lock alone, in an empty store: fetched, unpacked, then composed.
    fresh = Store(tmp_path / "fresh", durable=False)
    with pytest.raises(ForestConflict, match=r"node_modules/b.*'lib/node_modules/a/node_m"):
        build_lock(lock, fresh)
    scene.assert_untouched()
    assert os.listdir(fresh.root / "tmp") == []


@pytest.mark.parametrize("shipped", ["symlink", "file"])
def test_build_npm_location_claimed_by_another_package_refused(scene: Scene, shipped: str) -> None:
    # a ships node_modules/b itself (a link out, or a file) where the lock places b.
    thing: bytes | str = str(scene.outside) if shipped == "symlink" else b"not a dir"
    pins = nested(scene, {"node_modules/b": thing})
    with pytest.raises(ForestConflict, match="claims 'lib/node_modules/a/node_modules/b'"):
        build_lock(lock_of(scene.store, pins), scene.store)
    scene.assert_untouched()


def test_build_npm_node_modules_file_refused(scene: Scene) -> None:
    pins = nested(scene, {"node_modules": b"a file"})
    with pytest.raises(ForestConflict, match="not as a directory"):
        build_lock(lock_of(scene.store, pins), scene.store)
    scene.assert_untouched()


# -- Debian: symlinks where the builder writes its own files ------------------------------


def test_build_manifest_not_written_through_share_symlink(scene: Scene) -> None:
    # A package whose usr/share is a link out would have the manifest written through it.
    deb = deb_bytes(data_members({"usr/share": str(scene.outside), "usr/bin/x": b"x"}), "aaa")
    lock = lock_of(scene.store, [deb_pin(scene.server, "aaa", deb)])
    builder = Builder(scene.store, progress=False)
    _, env = builder.compose(lock.artefacts)  # builds: loft's own share/ wins the claim
    tree = scene.store.physical(env.path)
    assert (tree / "share/loft/env.json").is_file() and not (tree / "share").is_symlink()
    scene.assert_untouched()


def test_build_manifest_not_written_through_package_link(scene: Scene) -> None:
    # Two packages share usr/share/loft, so it is a real directory in which one of them
    # ships env.json as a link out: the manifest would follow it.
    one = deb_bytes(data_members({"usr/share/loft/a": b"a"}), "one")
    two = deb_bytes(data_members({"usr/share/loft/env.json": f"{scene.outside}/env.json"}), "two")
    lock = lock_of(scene.store, [deb_pin(scene.server, "one", one),
                                 deb_pin(scene.server, "two", two)])  # fmt: skip
    _, env = Builder(scene.store, progress=False).compose(lock.artefacts)
    manifest = scene.store.physical(env.path) / "share/loft/env.json"
    assert not manifest.is_symlink() and b'"packages"' in manifest.read_bytes()
    scene.assert_untouched()


UA = "update-alternatives --install {link} {name} /usr/bin/real 10{slave}\n"
ESCAPES = 40 * "/.."  # more than any scratch directory is deep


@pytest.mark.parametrize(
    ("link", "name", "slave"),
    [
        ("/usr/bin{up}{outside}/x", "x", ""),  # the link climbs out of the layer
        ("usr/bin/x", "x", ""),  # relative: update-alternatives refuses it too
        ("/usr/bin/x", "..", ""),
        ("/usr/bin/x", "a/b", ""),
        ("/usr/bin/x", "x", " --slave /usr/bin{up}{outside}/y y /usr/bin/real"),
        ("/usr/bin/x", "x", " --slave /usr/bin/y ../../y /usr/bin/real"),
        ("/usr/bin/x", "x", " --slave /usr/bin/y y /usr/bin/../../etc/shadow"),
        ("/usr/bin/./x", "x", ""),
        ("/usr/bin/" + "x" * 300, "x", ""),
    ],
)
def test_build_alternatives_with_unsafe_paths_refused(
    scene: Scene, link: str, name: str, slave: str
) -> None:
    fmt = {"up": ESCAPES, "outside": scene.outside}
    script = UA.format(link=link.format(**fmt), name=name, slave=slave.format(**fmt))
    deb = deb_bytes(data_members({"usr/bin/real": b"x"}), "evil", postinst=script)
    lock = lock_of(scene.store, [deb_pin(scene.server, "evil", deb)])
    with pytest.raises(AlternativesError, match=r"Debian package evil 1: evil\.postinst: "):
        build_lock(lock, scene.store)
    scene.assert_untouched()


# -- Debian: symlinks where the builder reads package files -------------------------------


def test_build_passwd_master_link_to_host_file_not_read(scene: Scene) -> None:
    (scene.outside / "secret").write_text("root:SECRET-HASH:19000:0:99999:7:::\n")
    files = {"usr/share/base-passwd/passwd.master": f"{scene.outside}/secret",
             "usr/share/base-passwd/group.master": b"root:*:0:\n"}  # fmt: skip
    deb = deb_bytes(data_members(files), "base-passwd")
    lock = lock_of(scene.store, [deb_pin(scene.server, "base-passwd", deb)])
    with pytest.raises(ConfinementError, match=r"passwd\.master.*symlink"):
        build_lock(lock, scene.store)
    scene.assert_untouched(["secret"])


def test_build_ca_certificates_dir_link_not_followed(scene: Scene) -> None:
    (scene.outside / "host.crt").write_text("-----BEGIN CERTIFICATE-----\nSECRET\n")
    deb = deb_bytes(data_members({"usr/share/ca-certificates": str(scene.outside)}),
                    "ca-certificates")  # fmt: skip
    lock = lock_of(scene.store, [deb_pin(scene.server, "ca-certificates", deb)])
    with pytest.raises(ConfinementError, match="'usr/share/ca-certificates' is a symlink"):
        build_lock(lock, scene.store)
    scene.assert_untouched(["host.crt"])


def test_build_postinst_link_to_host_file_not_read(scene: Scene) -> None:
    # If the builder followed it, this host file would add an alternative to the env.
    (scene.outside / "script").write_text(UA.format(link="/usr/bin/leak", name="leak", slave=""))
    files = {"usr/bin/real": b"x", "var/lib/dpkg/info/evil.postinst": f"{scene.outside}/script"}
    deb = deb_bytes(data_members(files), "evil")
    lock = lock_of(scene.store, [deb_pin(scene.server, "evil", deb)])
    _, env = Builder(scene.store, progress=False).compose(lock.artefacts)
    assert not os.path.lexists(scene.store.physical(env.path) / "bin/leak")
    scene.assert_untouched(["script"])
