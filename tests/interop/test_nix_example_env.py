"""Real Nix realises the example environment (python3 git curl, requests, left-pad) itself.

The environment is the one the envstore tests build once per session; it is pushed with
the real ``loft env push`` CLI into a file:// cache, and Debian's ``nix-store``
substitutes it, offline, into an empty chroot store, checks every path's contents
against its NAR hash, and refuses the same cache under a key it does not trust.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest
from nixtool import Nix

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "envstore"))

from envbuild_support import Example, example, loft

from loft.envstore.pathinfo import parse_nar_hash

pytestmark = pytest.mark.timeout(900)  # the first module to ask builds the example env


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return example(tmp_path_factory)


@pytest.fixture(scope="module")
def pushed(ex: Example, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The env's closure in a file:// cache, pushed by the CLI; (cache dir, public key)."""
    base = tmp_path_factory.mktemp("nix-example-cache")
    r = loft(["env", "keygen", "loft-example-1", "-o", str(base)], ex.data_dir, base)
    assert r.returncode == 0, r.stderr
    cache = base / "cache"
    r = loft(
        ["env", "push", ex.lock.env.path, "--to", f"file://{cache}",
         "--key", str(base / "loft-example-1.sec"), "--json"],
        ex.data_dir, base, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert set(report["pushed"]) == ex.store.closure([ex.lock.env.path])
    return cache, (base / "loft-example-1.pub").read_text().strip()


@pytest.mark.timeout(600)
def test_nix_realises_the_example_env_and_verifies_its_contents(
    ex: Example, pushed: tuple[Path, str], tmp_path: Path
) -> None:
    cache, public = pushed
    env = ex.lock.env.path
    nix = Nix(tmp_path)
    nix.run(
        "nix-store", "-r", env,
        "--option", "substituters", f"file://{cache}",
        "--option", "trusted-public-keys", public,
        timeout=420,
    )  # fmt: skip
    nix.run("nix-store", "--verify", "--check-contents", timeout=300)
    # Nix holds exactly loft's closure, with loft's NAR hashes and references.
    info = json.loads(nix.run("nix", "path-info", "--json", "--recursive", env))
    store = ex.store
    assert {i["path"] for i in info} == store.closure([env])
    for i in info:
        mine = store.query(i["path"])
        assert mine is not None
        assert (nar_digest(i["narHash"]), i["narSize"]) == (
            parse_nar_hash(mine.nar_hash),
            mine.nar_size,
        )
        assert sorted(i["references"]) == list(mine.references)
    # What Nix restored is the environment itself: the forest's links resolve inside
    # Nix's store to the package files.
    root = tmp_path / "nixroot"
    for tool in ("bin/python3", "bin/git", "bin/curl", "lib/node_modules/left-pad/index.js"):
        real = resolve_in(root, f"{env}/{tool}")
        assert real.is_file() and real.stat().st_size > 0, tool


def nar_digest(nix_hash: str) -> bytes:
    """Nix prints ``sha256-<base64>`` (SRI) or ``sha256:<nixbase32>``."""
    if nix_hash.startswith("sha256-"):
        return base64.b64decode(nix_hash.removeprefix("sha256-"))
    return parse_nar_hash(nix_hash)


def resolve_in(root: Path, logical: str) -> Path:
    """Follow ``logical``'s symlinks as if ``root`` were ``/`` (a chroot store's view)."""
    todo = [p for p in logical.split("/") if p]
    done: list[str] = []
    for _ in range(10_000):
        if not todo:
            return root.joinpath(*done)
        part = todo.pop(0)
        if part == "..":
            done = done[:-1]
            continue
        here = root.joinpath(*done, part)
        if here.is_symlink():
            target = str(here.readlink())
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p and p != "."] + todo
        else:
            done.append(part)
    raise AssertionError(f"symlink loop at {logical}")


@pytest.mark.timeout(300)
def test_nix_refuses_the_example_env_under_a_wrong_key(
    ex: Example, pushed: tuple[Path, str], tmp_path: Path
) -> None:
    cache, public = pushed
    name, _, _ = public.partition(":")
    nix = Nix(tmp_path)
    other = tmp_path / "other"
    nix.plain("nix-store", "--generate-binary-cache-key", name, str(other) + ".sec",
              str(other) + ".pub")  # fmt: skip
    impostor = Path(str(other) + ".pub").read_text().strip()  # same name, another key
    assert impostor != public
    r = nix.proc(
        "nix-store", "-r", ex.lock.env.path,
        "--option", "substituters", f"file://{cache}",
        "--option", "trusted-public-keys", impostor,
    )  # fmt: skip
    assert r.returncode != 0
    assert (
        "is not signed by any of the keys" in r.stderr
        or "does not have a valid signature" in r.stderr
    ), r.stderr
    assert nix.proc("nix-store", "--check-validity", ex.lock.env.path).returncode != 0
