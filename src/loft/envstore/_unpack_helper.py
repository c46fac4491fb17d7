"""Unpack one untrusted artefact into a directory; runs *inside* the build sandbox.

Standalone (imports nothing from loft): it is executed by Debian's ``/usr/bin/python3`` in
a bubblewrap sandbox as uid 65534 with no network, where only the artefact (read-only)
and the output directory (writable) are visible. Usage::

    _unpack_helper.py deb|wheel|npm ARTEFACT OUTDIR [PACKAGE-NAME]

A .deb's ar container is read here and its data.tar (xz, gzip, bzip2 or plain) decompressed
in this process; other compressions (zstd) go through ``dpkg-deb --fsys-tarfile``.
Every member name is checked before anything is written: no absolute paths, no ``..``,
no writing through a symlink, no device nodes or FIFOs. Debian packages are usr-merged
(``bin`` -> ``usr/bin``...) and lose setuid/setgid bits (the store has none); wheels and
npm tarballs with such bits are refused outright. Nothing from the artefact is executed:
no maintainer scripts, no install hooks, no npm lifecycle scripts. Errors are one JSON
line on stdout and exit status 2.

One file of over 500 lines on purpose: the jail runs it alone (compiled by the
system's Python) with nothing of loft importable, so it cannot lean on siblings; and it
is one idea, checking archive members before they are written.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
import sys
from collections.abc import Callable, Iterator
from typing import IO, Protocol, cast

# One helper process runs per artefact (~130 for a small environment), so its start-up is
# a real part of a build's CPU: modules only one kind needs (zipfile, configparser, json,
# subprocess) are imported where they are used, and tar is read by :func:`read_tar`.

Rename = Callable[[str], "str | None"]

#: Top-level directories of a .deb that a usr-merged system keeps under /usr.
MERGED = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64",
          "lib32": "usr/lib32", "libx32": "usr/libx32", "libo32": "usr/libo32"}  # fmt: skip
#: Maintainer scripts kept (as data, never run) so loft can derive what they would create.
KEPT_CONTROL = ("postinst", "preinst", "conffiles")
PYTHON = "/usr/bin/python3"
SITE = "usr/lib/python3/dist-packages"


class Refused(Exception):
    """The artefact holds something a store path may not."""


def clean_name(raw: str) -> str:
    """The normalised relative member name, or Refused when it could escape the tree."""
    if "\0" in raw:
        raise Refused(f"member name with a NUL byte: {raw!r}")
    if raw.startswith("/"):
        raise Refused(f"absolute member name {raw!r}")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Refused(f"member name with '..': {raw!r}")
    return "/".join(parts)


def usr_merge(name: str) -> str:
    """``bin/ls`` -> ``usr/bin/ls``; names already under /usr stay."""
    head, _, rest = name.partition("/")
    if head in MERGED:
        return MERGED[head] + ("/" + rest if rest else "")
    return name


class Readable(Protocol):
    """What :meth:`Writer.file` reads a file's contents from."""

    def read(self, n: int = -1, /) -> bytes: ...


class Writer:
    """Creates files under ``root`` without ever following a symlink it did not vet."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.links: set[str] = set()
        #: Directories known to exist as real directories (nothing ever replaces one).
        self.dirs: set[str] = {""}

    def _check_parents(self, name: str) -> None:
        parent = name.rpartition("/")[0]
        if parent in self.dirs:
            return
        parts = name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in self.dirs:
                continue
            if prefix in self.links:
                raise Refused(f"{name!r} would be written through the symlink {prefix!r}")
            full = os.path.join(self.root, prefix)
            if os.path.lexists(full) and not os.path.isdir(full):
                raise Refused(f"{name!r}: {prefix!r} is not a directory")
            if not os.path.lexists(full):
                os.mkdir(full, 0o755)
            self.dirs.add(prefix)

    def exists(self, name: str) -> bool:
        return name in self.dirs or os.path.lexists(os.path.join(self.root, name))

    def directory(self, name: str) -> None:
        if not name or name in self.dirs:
            return
        self._check_parents(name)
        full = os.path.join(self.root, name)
        if name in self.links:
            raise Refused(f"{name!r} is both a symlink and a directory")
        if not os.path.lexists(full):
            os.mkdir(full, 0o755)
        elif not os.path.isdir(full):
            return  # a file of that name came first; anything written below it is refused
        self.dirs.add(name)

    def _replace(self, name: str, full: str, what: str) -> None:
        """Make room for ``name``: a later member replaces an earlier file or link."""
        if name in self.dirs or (os.path.isdir(full) and not os.path.islink(full)):
            raise Refused(f"{name!r} is both a directory and a {what}")
        os.unlink(full)
        self.links.discard(name)

    def file(self, name: str, src: Readable, executable: bool) -> None:
        self._check_parents(name)
        full = os.path.join(self.root, name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        mode = 0o755 if executable else 0o644
        try:
            fd = os.open(full, flags, mode)
        except FileExistsError:
            self._replace(name, full, "file")
            fd = os.open(full, flags, mode)
        try:
            while chunk := src.read(1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def symlink(self, name: str, target: str) -> None:
        if "\0" in target or not target:
            raise Refused(f"bad symlink target for {name!r}")
        self._check_parents(name)
        full = os.path.join(self.root, name)
        try:
            os.symlink(target, full)
        except FileExistsError:
            self._replace(name, full, "symlink")
            os.symlink(target, full)
        self.links.add(name)

    def hardlink(self, name: str, existing: str) -> None:
        src = os.path.join(self.root, existing)
        if existing in self.links or not os.path.isfile(src) or os.path.islink(src):
            raise Refused(f"hard link {name!r} to {existing!r}, which is not a file")
        with open(src, "rb") as f:
            self.file(name, f, bool(os.stat(src).st_mode & 0o100))


BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
#: Member types with data blocks that are files (tar's regular, old regular, contiguous).
_REGULAR = (b"0", b"\0", b"7")
#: Member types tar defines without data blocks (hard and symbolic links, devices,
#: directories, FIFOs): their size field is ignored, as tar does.
_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")


class TarMember:
    """One member of a tar stream: what the extractor needs of its header."""

    __slots__ = ("linkname", "mode", "name", "size", "type")

    def __init__(self, name: str, linkname: str, mode: int, size: int, type_: bytes) -> None:
        self.name = name
        self.linkname = linkname
        self.mode = mode
        self.size = size
        self.type = type_

    def isreg(self) -> bool:
        return self.type in _REGULAR

    def isdir(self) -> bool:
        return self.type == b"5"

    def issym(self) -> bool:
        return self.type == b"2"

    def islnk(self) -> bool:
        return self.type == b"1"


class Bounded:
    """A reader over the next ``size`` bytes of a stream: a tar member's data, an ar
    member. Whatever the consumer does not read is skipped afterwards (:meth:`skip`)."""

    def __init__(self, f: IO[bytes], size: int, what: str) -> None:
        self._f = f
        self.left = size
        self._what = what  # names the archive in a "truncated ..." refusal

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            n = self.left
        data = read_exact(self._f, n, self._what)
        self.left -= n
        return data

    def skip(self) -> None:
        while self.read(1 << 20):
            pass


def read_exact(f: IO[bytes], n: int, what: str = "tar archive") -> bytes:
    """Exactly ``n`` bytes of a stream, or Refused (a truncated ``what``)."""
    parts = []
    while n > 0:
        chunk = f.read(n)
        if not chunk:
            raise Refused(f"truncated {what}")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def tar_text(raw: bytes) -> str:
    """A NUL-terminated header field, decoded as tar does in a UTF-8 locale."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def tar_number(raw: bytes) -> int:
    """An octal (or GNU base-256) header number."""
    if raw[0] == 0o200:
        return int.from_bytes(raw[1:], "big")
    if raw[0] == 0o377:
        raise Refused("negative number in a tar header")
    try:
        return int(raw.split(b"\0", 1)[0].decode("ascii").strip() or "0", 8)
    except (UnicodeDecodeError, ValueError):
        raise Refused("corrupt tar header (bad number)") from None


def pax_records(data: bytes) -> dict[str, str]:
    """The ``<length> <key>=<value>\\n`` records of a pax extended header."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space]
        if space < 0 or not digits.isdigit():
            raise Refused("corrupt pax header")
        length = int(digits)
        end = pos + length - 1  # the record's closing newline
        if length < 5 or pos + length > len(data) or data[end] != 0x0A:
            raise Refused("corrupt pax header")
        key, eq, value = data[space + 1 : end].partition(b"=")
        if not key or eq != b"=":
            raise Refused("corrupt pax header")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def read_tar(f: IO[bytes]) -> Iterator[tuple[TarMember, Bounded]]:
    """The members of a tar stream (ustar, GNU long names, pax), as Python's tarfile reads
    them, with their data; stops at the first zero block or the end of the stream.

    Written here rather than imported: tarfile costs each of the ~130 helper processes of
    a build more start-up time than most of them spend unpacking.
    """
    global_pax: dict[str, str] = {}
    # GNU long names and pax headers for the next member, in the order they came; the
    # first one wins (tarfile's nesting applies the outermost last).
    pending: list[tuple[bytes, str | dict[str, str]]] = []
    while True:
        hdr = f.read(BLOCK)
        if len(hdr) < BLOCK:
            hdr += read_exact(f, BLOCK - len(hdr)) if hdr else b""
        if not hdr or hdr == _ZERO_BLOCK:
            return
        unsigned = sum(hdr[:148]) + sum(hdr[156:]) + 8 * 32
        signed = unsigned - 256 * sum(1 for b in hdr[:148] + hdr[156:] if b > 127)
        if tar_number(hdr[148:156]) not in (unsigned, signed):
            raise Refused("corrupt tar header (bad checksum)")
        typ = hdr[156:157]
        size = tar_number(hdr[124:136])
        if typ in (b"L", b"K", b"x", b"g", b"X"):
            blob = read_exact(f, size)
            read_exact(f, -size % BLOCK)
            if typ in (b"L", b"K"):
                pending.append((typ, tar_text(blob)))
            elif typ == b"g":
                global_pax.update(pax_records(blob))
            else:
                pending.append((b"x", {**global_pax, **pax_records(blob)}))
            continue
        if typ == b"S" or not (typ in _REGULAR or typ in _NO_DATA):
            raise Refused(f"unsupported tar member type {typ!r}")
        name = tar_text(hdr[0:100])
        if typ == b"\0" and name.endswith("/"):
            typ = b"5"  # old tar: a directory is a regular file whose name ends in /
        if typ == b"5":
            name = name.rstrip("/")
        prefix = tar_text(hdr[345:500])
        if prefix:
            name = prefix + "/" + name
        m = TarMember(name, tar_text(hdr[157:257]), tar_number(hdr[100:108]), size, typ)
        for kind, value in reversed(pending):
            if isinstance(value, dict):
                apply_pax(m, value)
            elif kind == b"L":
                m.name = value
            else:
                m.linkname = value
            if m.isdir():
                m.name = m.name.removesuffix("/")
        pending = []
        data = Bounded(f, m.size if m.isreg() else 0, "tar archive")
        yield m, data
        data.skip()
        if m.isreg():
            read_exact(f, -m.size % BLOCK)


def apply_pax(m: TarMember, pax: dict[str, str]) -> None:
    """The pax keywords that matter here: path, linkpath, size (sparse files: refused)."""
    if any(k.startswith("GNU.sparse.") for k in pax):
        raise Refused(f"sparse file {m.name!r}")
    if "path" in pax:
        m.name = pax["path"].rstrip("/")
    if "linkpath" in pax:
        m.linkname = pax["linkpath"]
    if "size" in pax:
        try:
            m.size = int(pax["size"])
        except ValueError:
            m.size = 0


def extract_tar(f: IO[bytes], w: Writer, *, rename: Rename, strip_setuid: bool, what: str) -> None:
    """Extract a tar stream member by member, vetting each one."""
    written: dict[str, str] = {}  # member name -> where it went, for hard links
    for m, data in read_tar(f):
        orig = clean_name(m.name)
        name = rename(orig)
        if name is None:
            continue
        written[orig] = name
        if m.mode & (stat.S_ISUID | stat.S_ISGID) and not strip_setuid:
            raise Refused(f"{m.name!r} has a setuid/setgid bit")
        if m.isdir():
            w.directory(name)
        elif m.isreg():
            w.file(name, data, bool(m.mode & 0o111))
        elif m.issym():
            w.symlink(name, m.linkname)
        elif m.islnk():
            target = written.get(clean_name(m.linkname))
            if target is None:
                raise Refused(f"hard link {m.name!r} to a member not seen before")
            w.hardlink(name, target)
        else:
            raise Refused(f"{m.name!r} is a device node, FIFO or other special file")


def merged_rename(w: Writer) -> Rename:
    """Rename for .deb members: usr-merge, drop duplicates the merge creates."""

    def rename(name: str) -> str | None:
        new = usr_merge(name)
        if new != name and name and w.exists(new) and not os.path.isdir(os.path.join(w.root, new)):
            return None  # the usr copy wins; a merged system has only one
        return new

    return rename


def fix_merged_symlinks(w: Writer, tf_names: dict[str, str]) -> None:
    """Relative symlinks that moved with the merge still point at the same thing."""
    for new, old in tf_names.items():
        full = os.path.join(w.root, new)
        target = os.readlink(full)
        if target.startswith("/"):
            continue
        want = posixpath.normpath(posixpath.join(posixpath.dirname(old), target))
        if want.startswith(".."):
            continue
        want = usr_merge(want)
        rel = posixpath.relpath(want, posixpath.dirname(new))
        if rel != target:
            os.unlink(full)
            os.symlink(rel, full)


def ar_members(f: IO[bytes]) -> Iterator[tuple[str, Bounded]]:
    """The members of the ar archive a .deb is, in order (each must be consumed in turn)."""
    if f.read(8) != b"!<arch>\n":
        raise Refused("not a Debian package (no ar magic)")
    while True:
        head = f.read(60)
        if not head:
            return
        if len(head) != 60 or head[58:60] != b"`\n":
            raise Refused("corrupt ar member header")
        try:
            name = head[:16].decode("ascii").rstrip(" ").rstrip("/")
            size = int(head[48:58].decode("ascii").strip() or "-1")
        except (UnicodeDecodeError, ValueError):
            raise Refused("corrupt ar member header") from None
        if size < 0:
            raise Refused("corrupt ar member header")
        m = Bounded(f, size, "ar member")
        yield name, m
        m.skip()
        if size % 2:
            f.read(1)


#: Compressions of a control or data tar read here (dpkg-deb does the rest).
COMPRESSIONS = ("", ".xz", ".gz", ".bz2")


def decompressed(f: IO[bytes] | Bounded, comp: str) -> IO[bytes]:
    """A reader of the decompressed stream (buffered: the tar reader reads 512-byte headers)."""
    if comp == ".xz":
        import lzma

        return cast("IO[bytes]", lzma.LZMAFile(cast("IO[bytes]", f)))
    if comp == ".gz":
        import gzip

        return cast("IO[bytes]", gzip.GzipFile(fileobj=cast("IO[bytes]", f)))
    if comp == ".bz2":
        import bz2

        return cast("IO[bytes]", bz2.BZ2File(cast("IO[bytes]", f)))
    return cast("IO[bytes]", f)


def unpack_deb(artefact: str, out: str, package: str) -> None:
    """The .deb's data.tar streamed through the vetting extractor, usr-merged; the
    maintainer scripts kept (as data) under ``var/lib/dpkg/info``."""
    w = Writer(out)
    moved: dict[str, str] = {}
    rename_merge = merged_rename(w)

    def rename(name: str) -> str | None:
        new = rename_merge(name)
        if new is not None and new != name:
            moved[new] = name
        return new

    def extract(stream: IO[bytes]) -> None:
        extract_tar(stream, w, rename=rename, strip_setuid=True, what=artefact)

    control: dict[str, bytes] = {}
    seen = []
    with open(artefact, "rb") as f:
        for name, member in ar_members(f):
            seen.append(name)
            kind, _, comp = name.partition(".tar")
            if name == "debian-binary":
                if not member.read(64).startswith(b"2."):
                    raise Refused("unsupported Debian package format version")
            elif kind == "control" and comp in COMPRESSIONS:
                control = kept_control(decompressed(member, comp))
            elif kind == "data" and comp in COMPRESSIONS:
                extract(decompressed(member, comp))
            elif kind in ("control", "data"):  # zstd, lzma...: dpkg-deb knows them all
                if kind == "control":
                    control = dpkg_deb_control(artefact)
                else:
                    dpkg_deb_data(artefact, extract)
            elif not name.startswith("_"):  # dpkg ignores members starting with "_"
                raise Refused(f"unexpected member {name!r} in the Debian package")
    if [n.partition(".tar")[0] for n in seen if not n.startswith("_")] != [
        "debian-binary", "control", "data"
    ]:  # fmt: skip
        raise Refused(f"not a Debian package: members {seen}")
    fix_merged_symlinks(w, {n: o for n, o in moved.items() if n in w.links})
    # Control scripts are kept as data so the builder can derive alternatives from them.
    info = "var/lib/dpkg/info"
    for base, data in sorted(control.items()):
        for d in ("var", "var/lib", "var/lib/dpkg", info):
            w.directory(d)
        w.file(f"{info}/{package}.{base}", io.BytesIO(data), False)


def kept_control(f: IO[bytes]) -> dict[str, bytes]:
    """The maintainer scripts loft keeps, from a control.tar stream."""
    kept = {}
    for m, data in read_tar(f):
        base = clean_name(m.name)
        if base in KEPT_CONTROL and m.isreg():
            kept[base] = data.read()
    return kept


def dpkg_deb_control(artefact: str) -> dict[str, bytes]:
    """``dpkg-deb --ctrl-tarfile`` for compressions this helper does not read itself."""
    import subprocess

    ctrl = subprocess.run(["dpkg-deb", "--ctrl-tarfile", artefact], capture_output=True)
    if ctrl.returncode != 0:
        raise Refused("dpkg-deb could not read the control archive")
    return kept_control(io.BytesIO(ctrl.stdout))


def dpkg_deb_data(artefact: str, extract: Callable[[IO[bytes]], None]) -> None:
    """``dpkg-deb --fsys-tarfile`` streamed into ``extract``."""
    import subprocess

    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", artefact], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        extract(proc.stdout)
    finally:
        proc.stdout.close()
        rc = proc.wait()
    if rc != 0:
        raise Refused(f"dpkg-deb could not read the package (exit {rc})")


def unpack_npm(artefact: str, out: str) -> None:
    """An npm tarball's single top directory (``package/``) becomes the tree's root."""
    w = Writer(out)

    def rename(name: str) -> str | None:
        _, _, rest = name.partition("/")
        return rest or None

    with open(artefact, "rb") as raw:
        extract_tar(decompressed(raw, ".gz"), w, rename=rename, strip_setuid=False, what=artefact)
    # npm marks bin targets executable at install time; do the same, nothing more.
    manifest = os.path.join(out, "package.json")
    if os.path.isfile(manifest) and not os.path.islink(manifest):
        import json

        with open(manifest, "rb") as f:
            raw = json.load(f).get("bin")
        bins = (
            [raw] if isinstance(raw, str) else list(raw.values()) if isinstance(raw, dict) else []
        )
        for b in bins:
            full = os.path.join(out, clean_name(str(b)))
            if os.path.isfile(full) and not os.path.islink(full):
                os.chmod(full, 0o755)


_ENTRY = r"^(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+))?\s*(\[.*\])?\s*$"


def console_script(spec: str) -> bytes:
    """The small launcher pip would generate for ``module:attr``."""
    import re

    m = re.match(_ENTRY, spec)
    if not m or not m.group("attr"):
        raise Refused(f"bad entry point {spec!r}")
    module, attr = m.group("module"), m.group("attr")
    head = attr.split(".")[0]
    return (
        f"#!{PYTHON}\n# -*- coding: utf-8 -*-\nimport re\nimport sys\n"
        f"from {module} import {head}\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
        f"    sys.exit({attr}())\n"
    ).encode()


def unpack_wheel(artefact: str, out: str, pyver: str) -> None:
    """A wheel laid out where Debian's python finds it, plus its console scripts."""
    import configparser
    import zipfile

    w = Writer(out)
    entry_points: bytes | None = None
    with zipfile.ZipFile(artefact) as zf:
        for zi in zf.infolist():
            name = clean_name(zi.filename)
            mode = zi.external_attr >> 16
            fmt = stat.S_IFMT(mode)
            if fmt and fmt not in (stat.S_IFREG, stat.S_IFDIR):
                raise Refused(f"{zi.filename!r} is not a plain file")
            if mode & (stat.S_ISUID | stat.S_ISGID):
                raise Refused(f"{zi.filename!r} has a setuid/setgid bit")
            parts = name.split("/")
            if parts[0].endswith(".data") and len(parts) >= 2:
                kind, rest = parts[1], "/".join(parts[2:])
                dist = parts[0][: -len(".data")]
                dest = {
                    "purelib": f"{SITE}/{rest}",
                    "platlib": f"{SITE}/{rest}",
                    "scripts": f"usr/bin/{rest}",
                    "headers": f"usr/include/python{pyver}/{dist.split('-')[0]}/{rest}",
                    "data": f"usr/{rest}",
                }.get(kind)
                if dest is None:
                    raise Refused(f"unknown wheel data directory {parts[1]!r}")
                dest = dest.rstrip("/")
            else:
                dest = f"{SITE}/{name}".rstrip("/")
            if zi.is_dir():
                w.directory(dest)
                continue
            data = zf.read(zi)
            if parts[0].endswith(".dist-info") and parts[-1] == "entry_points.txt":
                entry_points = data
            executable = bool(mode & 0o111)
            if dest.startswith("usr/bin/"):
                executable = True
                if data.startswith(b"#!python"):
                    data = b"#!" + PYTHON.encode() + data[data.index(b"\n") :]
            w.file(dest, io.BytesIO(data), executable)
    if entry_points:
        cp = configparser.ConfigParser(delimiters=("=",), interpolation=None)
        cp.optionxform = str  # type: ignore[assignment,method-assign]
        cp.read_string(entry_points.decode())
        for section in ("console_scripts", "gui_scripts"):
            if cp.has_section(section):
                for script, spec in sorted(cp.items(section)):
                    name = clean_name(f"usr/bin/{script}")
                    if name.count("/") != 2:
                        raise Refused(f"bad console script name {script!r}")
                    w.file(name, io.BytesIO(console_script(spec)), True)


def main() -> None:
    """Dispatch on the artefact kind; report refusals as JSON."""
    kind, artefact, out = sys.argv[1:4]
    extra = sys.argv[4] if len(sys.argv) > 4 else ""
    errors: tuple[type[Exception], ...] = (Refused, EOFError, OSError, ValueError)
    if kind == "wheel":
        import zipfile

        errors += (zipfile.BadZipFile,)
    else:  # corrupt compressed data (gzip's own errors are OSErrors)
        import lzma
        import zlib

        errors += (lzma.LZMAError, zlib.error)
    try:
        if kind == "deb":
            unpack_deb(artefact, out, extra)
        elif kind == "wheel":
            unpack_wheel(artefact, out, extra)
        elif kind == "npm":
            unpack_npm(artefact, out)
        else:
            raise Refused(f"unknown artefact kind {kind!r}")
    except errors as e:
        import json

        json.dump({"error": str(e) or type(e).__name__}, sys.stdout)
        sys.exit(2)


if __name__ == "__main__":
    main()
