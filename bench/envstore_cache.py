"""How fast are loft's store and binary cache next to real Nix doing the same work?

Anchor: Nix 2.8 (nix-bin) on the same trees, in throwaway chroot stores
(``--store local?root=``, offline, private config), measured in the same run:

- NAR hash of a tree:      loft ``nar.hash_path``            vs ``nix-hash --type sha256``
- add a tree to a store:   loft ``Store.add_tree``            vs ``nix-store --add``
- push a closure (zstd):   loft ``binary_cache.push``         vs ``nix copy --to file://?compression=zstd``
- substitute the closure:  loft ``binary_cache.pull``         vs ``nix-store -r`` from loft's cache

Trees: a few system directories (python3.11 stdlib, perl, share/locale...) as separate
store paths plus an "env" path of symlinks referencing all of them. Prints JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loft.envstore import nar
from loft.envstore.binary_cache import pull, push
from loft.envstore.fs import disk_usage
from loft.envstore.signing import SecretKey
from loft.envstore.store import Store

SOURCES = [
    "/usr/lib/python3.11",
    "/usr/share/perl",
    "/usr/lib/x86_64-linux-gnu/perl-base",
    "/usr/share/zoneinfo",
    "/usr/share/i18n",
]


def timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class Nix:
    def __init__(self, tmp: Path, name: str) -> None:
        conf = tmp / f"{name}-conf"
        conf.mkdir()
        (conf / "nix.conf").write_text(
            "substituters =\nexperimental-features = nix-command\n"
            "build-users-group =\nsandbox = false\n"
        )
        self.root = tmp / f"{name}-root"
        self.env = {
            **os.environ,
            "NIX_CONF_DIR": str(conf),
            "NIX_STATE_DIR": str(tmp / f"{name}-state"),
            "NIX_LOG_DIR": str(tmp / f"{name}-log"),
            "HOME": str(tmp / f"{name}-home"),
            "XDG_CACHE_HOME": str(tmp / f"{name}-cache"),
        }

    def run(self, *args: str) -> str:
        r = subprocess.run(
            [args[0], "--store", f"local?root={self.root}", *args[1:]],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode:
            raise SystemExit(f"{args}: {r.stderr}")
        return r.stdout.strip()


def main() -> None:
    sources = [Path(s) for s in SOURCES if Path(s).is_dir()]
    tmp = Path(tempfile.mkdtemp(prefix="loft-bench-envstore-", dir="/var/tmp"))
    try:
        result: dict[str, object] = {"trees": [str(s) for s in sources]}
        # Private copies, so both sides read the same (page-cached) bytes.
        trees = []
        for s in sources:
            dst = tmp / "src" / s.name
            shutil.copytree(s, dst, symlinks=True)
            trees.append(dst)
        nar_bytes = sum(nar.hash_path(t)[1] for t in trees)
        result["nar_bytes"] = nar_bytes

        t_loft, _ = timed(lambda: [nar.hash_path(t) for t in trees])
        nix = Nix(tmp, "nix")
        t_nix, _ = timed(
            lambda: [
                subprocess.run(
                    ["nix-hash", "--type", "sha256", str(t)], env=nix.env, check=True,
                    capture_output=True,
                )
                for t in trees
            ]
        )  # fmt: skip
        result["nar_hash_s"] = {"loft": round(t_loft, 3), "nix": round(t_nix, 3)}

        store = Store(tmp / "loft-store")
        added = []
        # loft adds trees that already sit in its scratch space (the unpacker writes them
        # there); nix-store --add copies from outside. Report loft's copy separately.
        scratches = []
        copy_s = 0.0
        for t in trees:
            scratch = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=store.root / "tmp"))
            dt, _ = timed(
                lambda t=t, scratch=scratch: shutil.copytree(t, scratch / t.name, symlinks=True)
            )
            copy_s += dt
            scratches.append(scratch / t.name)
        t_loft, _ = timed(lambda: [added.append(store.add_tree(s, s.name)) for s in scratches])
        t_nix, _ = timed(lambda: [nix.run("nix-store", "--add", str(t)) for t in trees])
        result["add_tree_s"] = {
            "loft": round(t_loft, 3),
            "loft_copy_into_scratch": round(copy_s, 3),
            "nix_including_copy": round(t_nix, 3),
        }

        with store.tmpdir() as scratch:
            env = scratch / "env"
            env.mkdir()
            for a in added:
                os.symlink(a.path, env / a.path.rsplit("-", 1)[-1])
            env_info = store.add_tree(env, "env", references_from=[a.path for a in added])
        closure = store.closure([env_info.path])
        result["closure_paths"] = len(closure)

        key = SecretKey.generate("bench-1")
        cache = tmp / "loft-cache"
        t_loft, r = timed(lambda: push(store, [env_info.path], f"file://{cache}", key))
        result["compressed_bytes"] = r.file_bytes
        # Nix pushes the same closure from its own store (it needs the paths valid there).
        nix_src = Nix(tmp, "nixsrc")
        nix_src.run(
            "nix-store", "-r", env_info.path, "--option", "substituters", f"file://{cache}",
            "--option", "trusted-public-keys", key.public().render(),
        )  # fmt: skip
        nix_cache = tmp / "nix-cache"
        t_nix, _ = timed(
            lambda: nix_src.run(
                "nix", "copy", "--to", f"file://{nix_cache}?compression=zstd", env_info.path
            )
        )
        result["push_s"] = {"loft": round(t_loft, 3), "nix": round(t_nix, 3)}

        dst = Store(tmp / "loft-dst")
        t_loft, _ = timed(lambda: pull(dst, [env_info.path], f"file://{cache}", [key.public()]))
        nix_dst = Nix(tmp, "nixdst")
        t_nix, _ = timed(
            lambda: nix_dst.run(
                "nix-store", "-r", env_info.path, "--option", "substituters", f"file://{cache}",
                "--option", "trusted-public-keys", key.public().render(),
            )
        )  # fmt: skip
        result["pull_s"] = {"loft": round(t_loft, 3), "nix": round(t_nix, 3)}
        assert dst.verify() == {}
        result["store_disk_bytes"] = disk_usage(dst.real_store_dir)
        result["nix_version"] = subprocess.run(
            ["nix", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        json.dump(result, sys.stdout, indent=2)
        print()
    finally:
        for p in tmp.rglob("*"):
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
