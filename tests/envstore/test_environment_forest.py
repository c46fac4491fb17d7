"""Environment composition: the symlink forest and the generated maintainer-script layers."""

from __future__ import annotations

import os
from pathlib import Path

from loft.envstore.environment import (
    Placement,
    alternatives_layer,
    ca_bundle_layer,
    parse_alternatives,
    passwd_layer,
    plan_forest,
    provided_paths,
    write_forest,
    write_layer,
)

S = "/nix/store/"


def tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            os.symlink(content, p)
        else:
            p.write_bytes(content)
    return root


def test_forest_links_files_copies_symlinks_first_wins(tmp_path: Path) -> None:
    a = tree(tmp_path / "a", {
        "usr/bin/python3.11": b"elf", "usr/bin/python3": "python3.11",
        "usr/lib/python3.11/os.py": b"os", "usr/lib/python3.11/email/__init__.py": b"e",
        "etc/python3.11/site.py": b"x", "var/lib/dpkg/info/a.postinst": b"#!/bin/sh",
    })  # fmt: skip
    b = tree(tmp_path / "b", {
        "usr/bin/python3": b"other", "usr/lib/b.so": b"so",
        "usr/lib/python3.11/json/__init__.py": b"j", "usr/share/doc/b/copyright": b"c",
    })  # fmt: skip
    npm = tree(tmp_path / "n", {"index.js": b"js", "node_modules/dep/index.js": b"dep"})
    placements = [
        Placement(S + "aaa-a", a), Placement(S + "bbb-b", b),
        Placement(S + "nnn-n", npm, at="lib/node_modules/n"),
    ]  # fmt: skip
    forest = plan_forest(placements)
    assert forest["bin/python3.11"] == S + "aaa-a/usr/bin/python3.11"
    assert forest["bin/python3"] == "python3.11"  # verbatim, and a's claim wins over b's file
    assert forest["lib/b.so"] == S + "bbb-b/usr/lib/b.so"
    # A directory only one package has is one link; a shared one is split and merged.
    assert forest["etc/python3.11"] == S + "aaa-a/etc/python3.11"
    assert forest["share"] == S + "bbb-b/usr/share"
    assert forest["lib/python3.11"] is None
    assert forest["lib/python3.11/os.py"] == S + "aaa-a/usr/lib/python3.11/os.py"
    assert forest["lib/python3.11/email"] == S + "aaa-a/usr/lib/python3.11/email"
    assert forest["lib/python3.11/json"] == S + "bbb-b/usr/lib/python3.11/json"
    assert forest["lib/node_modules/n"] == S + "nnn-n"
    assert forest["lib/node_modules"] is None
    assert not any(k.startswith("var") for k in forest)  # only /usr and /etc are carried
    assert forest["bin"] is None and forest["etc"] is None
    provided = provided_paths(placements)
    assert {"/usr/bin/python3", "/etc/python3.11/site.py", "/usr/share/doc/b/copyright"} <= provided
    out = tmp_path / "env"
    out.mkdir()
    write_forest(forest, out, [pl.store_path for pl in placements])
    # Links go through .p/<n> -> the store path, relative, so most fit in the inode.
    assert os.readlink(out / ".p/1") == S + "bbb-b"
    assert os.readlink(out / "lib/b.so") == "../.p/1/usr/lib/b.so"
    assert os.readlink(out / "lib/python3.11/email") == "../../.p/0/usr/lib/python3.11/email"
    assert os.readlink(out / "lib/node_modules/n") == "../../.p/2"
    assert os.readlink(out / "bin/python3") == "python3.11"
    assert (out / "lib").is_dir() and not (out / "lib").is_symlink()
    assert os.lstat(out / "lib/b.so").st_blocks == 0  # an inline ("fast") symlink


POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ]; then
    update-alternatives --install /usr/bin/awk awk /usr/bin/mawk 5 \\
        --slave /usr/share/man/man1/awk.1.gz awk.1.gz /usr/share/man/man1/mawk.1.gz \\
        --slave /usr/bin/nawk nawk /usr/bin/mawk
    update-alternatives --install /usr/bin/pager pager /bin/more 50
    update-alternatives --install "$DIR/x" x "$DIR/y" 10
fi
"""


def test_alternatives_from_postinst() -> None:
    found = parse_alternatives(POSTINST)
    assert [(f[0], f[1], f[2], f[3]) for f in found] == [
        ("/usr/bin/awk", "awk", "/usr/bin/mawk", 5), ("/usr/bin/pager", "pager", "/bin/more", 50),
    ]  # fmt: skip
    gawk = "update-alternatives --install /usr/bin/awk awk /usr/bin/gawk 10\n"
    provided = {"/usr/bin/mawk", "/usr/bin/more", "/usr/share/man/man1/mawk.1.gz"}
    layer = alternatives_layer({"mawk": POSTINST, "gawk": gawk}, provided)  # gawk not provided
    assert layer.links == {
        "usr/bin/awk": "/etc/alternatives/awk",
        "etc/alternatives/awk": "/usr/bin/mawk",
        "usr/share/man/man1/awk.1.gz": "/etc/alternatives/awk.1.gz",
        "etc/alternatives/awk.1.gz": "/usr/share/man/man1/mawk.1.gz",
        "usr/bin/nawk": "/etc/alternatives/nawk",
        "etc/alternatives/nawk": "/usr/bin/mawk",
        "usr/bin/pager": "/etc/alternatives/pager",
        "etc/alternatives/pager": "/bin/more",
    }


def test_ca_bundle_in_sorted_order(tmp_path: Path) -> None:
    pkg = tree(tmp_path / "ca", {
        "usr/share/ca-certificates/mozilla/B.crt": b"-----B-----\n",
        "usr/share/ca-certificates/mozilla/A.crt": b"-----A-----",
    })  # fmt: skip
    layer = ca_bundle_layer(pkg)
    assert layer.files == {"etc/ssl/certs/ca-certificates.crt": b"-----A-----\n-----B-----\n"}
    assert layer.links == {}
    out = tmp_path / "layer"
    out.mkdir()
    write_layer(layer, out)
    assert (out / "etc/ssl/certs/ca-certificates.crt").read_bytes().count(b"-----") == 4


def test_passwd_from_base_passwd(tmp_path: Path) -> None:
    pkg = tree(tmp_path / "bp", {
        "usr/share/base-passwd/passwd.master": b"root:*:0:0:root:/root:/bin/sh\n",
        "usr/share/base-passwd/group.master": b"root:*:0:\n",
    })  # fmt: skip
    layer = passwd_layer(pkg)
    assert layer.files["etc/passwd"].startswith(b"root:*:0:0:")
    assert b"\nrunner:x:1000:1000:" in layer.files["etc/passwd"]
    assert layer.files["etc/group"] == b"root:*:0:\nrunner:x:1000:\n"
