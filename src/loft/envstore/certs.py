"""OpenSSL hash links for a CA directory: what ``c_rehash`` / ``update-ca-certificates``
would put in ``/etc/ssl/certs`` (``<subject-hash>.<n>`` -> the certificate).

OpenSSL looks a certificate's issuer up in a ``-CApath`` directory by the hash of its
canonical subject name, so the links are needed by anything that uses the directory
rather than the bundle. The hashes come from the host's ``openssl rehash`` run in the
unpack jail (the certificates are artefact content; the builder does not parse them):
each certificate in a directory of its own, so every certificate's hash is learnt
regardless of the order ``openssl`` reads a directory in, and the numbering here is
deterministic: certificates sharing a hash get ``.0``, ``.1``... in name order, and
byte-identical copies one link, as ``c_rehash`` skips duplicates.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from loft.envstore.confined import Beneath
from loft.envstore.sandbox import jail_writable, tool_jail
from loft.envstore.unpack import UnpackError

__all__ = ["OPENSSL", "ca_hash_links"]

OPENSSL = "/usr/bin/openssl"
_TIMEOUT = 120
_HASH_LINK = re.compile(r"[0-9a-f]{8}\.0")


def ca_hash_links(certs_root: Path, rels: Sequence[str], scratch: Path) -> dict[str, str]:
    """``{"<hash>.<n>": rel}`` for the certificates ``rels`` under ``certs_root``.

    Files that are not exactly one certificate get no link (as with ``c_rehash``).
    ``scratch`` is an empty-able working directory on any filesystem.
    """
    if not rels:
        return {}
    work = scratch / "rehash"
    work.mkdir(mode=0o755)  # the jail's unprivileged uid enters it (it is /jail/out)
    os.chmod(work, 0o755)  # whatever the umask
    for i, rel in enumerate(rels):
        jail_writable(work / str(i))
        os.symlink(f"/jail/in/{rel}", work / str(i) / "c.crt")
    dirs = [f"/jail/out/{i}" for i in range(len(rels))]
    jail = tool_jail(certs_root, work, [OPENSSL, "rehash", *dirs])
    r = jail.run(capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        raise UnpackError(f"openssl rehash of the CA certificates failed: {last}")
    by_hash: dict[str, list[str]] = {}
    for i, rel in enumerate(rels):
        d = work / str(i)
        made = sorted(n for n in os.listdir(d) if n != "c.crt")
        if not made:
            continue  # not a certificate
        # The jail's output is untrusted like any other: exactly one well-formed link.
        if len(made) != 1 or not _HASH_LINK.fullmatch(made[0]):
            raise UnpackError(f"openssl rehash left unexpected entries for {rel}: {made}")
        if os.readlink(d / made[0]) != "c.crt":
            raise UnpackError(f"openssl rehash linked {made[0]} elsewhere for {rel}")
        by_hash.setdefault(made[0][:8], []).append(rel)
    links: dict[str, str] = {}
    with Beneath(certs_root) as certs:  # package content: no symlink of it is followed
        for h, group in sorted(by_hash.items()):
            kept: list[tuple[str, bytes]] = []
            for rel in sorted(group):
                data = certs.read_bytes(rel)
                if all(data != other for _, other in kept):
                    kept.append((rel, data))
            for n, (rel, _) in enumerate(kept):
                links[f"{h}.{n}"] = rel
    return links
