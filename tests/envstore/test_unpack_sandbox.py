"""Sandboxed unpacking: real dpkg-deb/bubblewrap, hostile archives refused, nothing run."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from escape_support import (
    ATTEMPTS,
    PROBE,
    assert_no_privileges,
    attempt_problem,
    lease_break_time_kept,
    syscall_numbers,
)
from tar_support import deb_bytes, member, tar_bytes

from loft.envstore.sandbox import NOBODY, jail_writable, unpack_jail
from loft.envstore.unpack import UnpackError, unpack

pytestmark = pytest.mark.timeout(60)


def raw_deb(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    path.write_bytes(deb_bytes(members))
    return path


def built_deb(tmp_path: Path) -> Path:
    """A .deb made by the real dpkg-deb, with non-usr-merged paths and a setuid binary."""
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: demo\nVersion: 1.0\nArchitecture: all\nMaintainer: x <x@y>\nDescription: d\n"
    )
    (root / "DEBIAN/postinst").write_text("#!/bin/sh\ntouch /jail/out/POSTINST-RAN\n")
    (root / "DEBIAN/postinst").chmod(0o755)
    (root / "bin").mkdir()
    (root / "bin/tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (root / "bin/tool").chmod(0o4755)
    (root / "sbin").mkdir()
    os.symlink("../bin/tool", root / "sbin/tool-link")
    os.link(root / "bin/tool", root / "sbin/tool-hard")
    (root / "usr/share/demo").mkdir(parents=True)
    (root / "usr/share/demo/data").write_text("data\n")
    deb = tmp_path / "demo_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
                   check=True, capture_output=True)  # fmt: skip
    return deb


def test_deb_is_usr_merged_setuid_stripped_scripts_kept_not_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    unpack("deb", built_deb(tmp_path), out, "demo", "demo")
    tool = out / "usr/bin/tool"
    assert tool.read_bytes() == b"#!/bin/sh\necho tool\n"
    assert not tool.stat().st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert tool.stat().st_mode & 0o100
    assert not (out / "bin").exists() and not (out / "sbin").exists()
    # The relative link still reaches the tool after the move to usr/sbin.
    assert os.readlink(out / "usr/sbin/tool-link") == "../bin/tool"
    assert (out / "usr/sbin/tool-link").resolve() == tool.resolve()
    assert (out / "usr/sbin/tool-hard").read_bytes() == tool.read_bytes()
    assert (out / "usr/share/demo/data").read_text() == "data\n"
    assert "touch" in (out / "var/lib/dpkg/info/demo.postinst").read_text()
    assert not (out / "POSTINST-RAN").exists()


@pytest.mark.parametrize(
    ("members", "needle"),
    [
        ([(member("./../escape"), b"x")], "'..'"),
        ([(member("/etc/passwd"), b"x")], "absolute member name"),
        ([(member("./dev/null", tarfile.CHRTYPE), b"")], "device node"),
        ([(member("./fifo", tarfile.FIFOTYPE), b"")], "device node, FIFO"),
        (
            [(member("./etc", tarfile.SYMTYPE, link="/etc"), b""), (member("./etc/shadow"), b"x")],
            "through the symlink",
        ),
    ],
)
def test_hostile_deb_refused(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], needle: str
) -> None:
    deb = raw_deb(tmp_path / "evil_1_all.deb", members)
    with pytest.raises(UnpackError) as e:
        unpack("deb", deb, tmp_path / "out", "Debian package evil 1", "evil")
    assert "Debian package evil 1" in str(e.value)
    assert needle in str(e.value)
    assert not Path("/escape").exists()


def npm_tgz(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    path.write_bytes(tar_bytes(members, "w:gz"))
    return path


def test_npm_tarball_and_bin_made_executable(tmp_path: Path) -> None:
    pkg = json.dumps({"name": "demo", "version": "1.0.0", "bin": {"demo": "cli.js"},
                      "scripts": {"install": "touch /jail/out/INSTALL-RAN"}}).encode()  # fmt: skip
    tgz = npm_tgz(tmp_path / "demo.tgz", [
        (member("package/package.json"), pkg),
        (member("package/cli.js"), b"#!/usr/bin/env node\n"),
        (member("package/lib/index.js"), b"module.exports = 1\n"),
    ])  # fmt: skip
    out = tmp_path / "out"
    unpack("npm", tgz, out, "npm package demo")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "cli.js", "lib", "lib/index.js", "package.json",
    ]  # fmt: skip
    assert (out / "cli.js").stat().st_mode & 0o111
    assert not (out / "INSTALL-RAN").exists()


def test_npm_setuid_refused(tmp_path: Path) -> None:
    tgz = npm_tgz(tmp_path / "evil.tgz", [(member("package/x", mode=0o4755), b"x")])
    with pytest.raises(UnpackError, match=r"npm package evil: refused.*setuid"):
        unpack("npm", tgz, tmp_path / "out", "npm package evil")


def wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def test_wheel_layout_and_console_scripts(tmp_path: Path) -> None:
    whl = wheel(tmp_path / "demo-1.0-py3-none-any.whl", {
        "demo/__init__.py": b"def main():\n    return 0\n",
        "demo-1.0.dist-info/METADATA": b"Name: demo\n",
        "demo-1.0.dist-info/entry_points.txt": b"[console_scripts]\ndemo-cli = demo:main\n",
        "demo-1.0.data/scripts/helper": b"#!python\nprint('hi')\n",
        "demo-1.0.data/purelib/demo_extra.py": b"X = 1\n",
    })  # fmt: skip
    out = tmp_path / "out"
    unpack("wheel", whl, out, "PyPI wheel demo 1.0", "3.11")
    site = out / "usr/lib/python3/dist-packages"
    assert (site / "demo/__init__.py").is_file() and (site / "demo_extra.py").is_file()
    cli = (out / "usr/bin/demo-cli").read_text()
    assert cli.startswith("#!/usr/bin/python3\n") and "from demo import main" in cli
    assert (out / "usr/bin/helper").read_text() == "#!/usr/bin/python3\nprint('hi')\n"
    assert (out / "usr/bin/helper").stat().st_mode & 0o111
    # The generated launcher really runs with Debian's python against the unpacked tree.
    env = {"PYTHONPATH": str(site)}
    assert (
        subprocess.run(["/usr/bin/python3", str(out / "usr/bin/demo-cli")], env=env).returncode == 0
    )


def test_wheel_path_traversal_refused(tmp_path: Path) -> None:
    whl = wheel(tmp_path / "evil-1.0-py3-none-any.whl", {"../../evil.py": b"x"})
    with pytest.raises(UnpackError, match=r"PyPI wheel evil: refused.*'\.\.'"):
        unpack("wheel", whl, tmp_path / "out", "PyPI wheel evil", "3.11")


def test_jail_is_nobody_without_network_or_host_files(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, os, sys\n"
        "out = sys.argv[3]\n"
        "try:\n    open(sys.argv[2], 'a').close(); writable = True\n"
        "except OSError:\n    writable = False\n"
        "r = {'uid': os.getuid(), 'net': open('/proc/net/dev').read().split('\\n')[2:],\n"
        "     'root': sorted(os.listdir('/')), 'artefact_writable': writable,\n"
        "     'home': os.path.exists('/root') or os.path.exists('/home'),\n"
        "     'caps': [ln.split()[1] for ln in open('/proc/self/status')\n"
        "              if ln.startswith(('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb'))]}\n"
        "open(os.path.join(out, 'r.json'), 'w').write(json.dumps(r))\n"
    )
    artefact = tmp_path / "a.bin"
    artefact.write_bytes(b"x")
    out = tmp_path / "out"
    jail_writable(out)
    unpack_jail(probe, "x", artefact, out, "").run(check=True)
    r = json.loads((out / "r.json").read_text())
    assert r["uid"] == NOBODY
    # Unprivileged on the host as well (as root, a user namespace would have mapped the
    # jail's uid to root outside): what it writes belongs to nobody, and it holds no
    # capability in any set.
    assert (out / "r.json").stat().st_uid == (NOBODY if os.geteuid() == 0 else os.geteuid())
    inh, prm, eff, bnd, amb = r["caps"]
    assert inh == prm == eff == amb == "0" * 16
    if os.geteuid() == 0:
        assert bnd == "0" * 16
    assert [ln.split(":")[0].strip() for ln in r["net"] if ln.strip()] == ["lo"]
    assert r["root"] == ["bin", "dev", "jail", "lib", "lib64", "proc", "sbin", "tmp", "usr"]
    assert r["artefact_writable"] is False and r["home"] is False


def test_jail_escape_attempts_fail(tmp_path: Path) -> None:
    # The runner's escape probe (test_run_escape.py), on the host's python in the jail.
    artefact = tmp_path / "a.bin"
    artefact.write_bytes(b"x")
    out = tmp_path / "out"
    jail_writable(out)
    with lease_break_time_kept():
        jail = unpack_jail(PROBE, "x", artefact, out, syscall_numbers())
        r = jail.run(capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert sorted(result["attempts"]) == ATTEMPTS
    assert [p for p in (attempt_problem(result["attempts"], n) for n in ATTEMPTS) if p] == []
    assert_no_privileges(result["status"])
    # The setuid copy it left in its writable bind (a host directory) is nobody's (or the
    # caller's), and was made on a nosuid mount.
    suid = (out / "suid-probe").stat()
    assert suid.st_uid == (NOBODY if os.geteuid() == 0 else os.geteuid()) != 0
