"""``loft volume ...`` with bad input: one clear error line on stderr (plus an optional hint
line), a non-zero exit code, and nothing changed (catalog listings and volume contents are
compared before and after)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from loft.cli.group import main

KIB, MIB = 1 << 10, 1 << 20

pytestmark = pytest.mark.timeout(120)


class Loft:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(self, *args: str, input: bytes | None = None, **env: str) -> Result:
        return CliRunner().invoke(main, list(args), env={**self.env, **env}, input=input)

    def ok(self, *args: str, input: bytes | None = None) -> Result:
        result = self(*args, input=input)
        assert result.exit_code == 0, f"loft {' '.join(args)}: {result.stderr}"
        return result

    def state(self) -> Any:
        """Everything a user could see change: volumes, heads, snapshots, contents."""
        vols = json.loads(self.ok("volume", "ls", "--json").stdout)
        for v in vols:
            v["snapshots"] = json.loads(self.ok("volume", "snapshots", v["name"], "--json").stdout)
            v["data"] = self.ok("volume", "export", v["name"], "-").stdout_bytes
        return vols


def assert_one_error(result: Result, *needles: str) -> None:
    """Exit code != 0 and exactly one error line (plus an optional hint) on stderr.

    Usage errors are click's standard form (usage + "Try --help" lines, then one
    ``Error:`` line); loft's own errors are ``loft: error:`` plus an optional ``loft: hint:``.
    """
    assert result.exit_code != 0, result.stdout
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), f"crashed: {result.exception!r}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if lines and lines[0].startswith("Usage:"):
        errors = [line for line in lines if line.startswith("Error:")]
        assert len(errors) == 1 and len(lines) == 3, lines
    else:
        assert 1 <= len(lines) <= 2, lines
        assert lines[0].startswith("loft: error: "), lines
        if len(lines) == 2:
            assert lines[1].startswith("loft: hint: "), lines
        errors = lines[:1]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle.lower() in errors[0].lower(), errors[0]


@pytest.fixture(scope="module")
def loft(tmp_path_factory: pytest.TempPathFactory) -> Loft:
    """A data dir with volume v (data + snapshot s1) and volume w, shared by the tests of
    this module (each checks that it changed nothing)."""
    tmp_path = tmp_path_factory.mktemp("errors")
    cli = Loft(
        {"LOFT_DATA_DIR": str(tmp_path / "data"), "LOFT_CHUNKS": f"file://{tmp_path / 'chunks'}"}
    )
    cli.ok("volume", "create", "v", "--size", "512K", "--extent-size", "64K")
    cli.ok("volume", "create", "w", "--size", "512K", "--extent-size", "64K")
    cli.ok("volume", "import", "v", "-", input=b"\x5a" * (100 * KIB))
    cli.ok("volume", "snapshot", "v", "s1")
    return cli


BAD_INPUT = [
    (("volume", "create", "x", "--size", "12X"), ("size",)),
    (("volume", "create", "x", "--size", "5000"), ("size",)),
    (("volume", "create", "x", "--size", "0"), ("size",)),
    (("volume", "create", "x", "--size", "1M", "--extent-size", "3K"), ("extent",)),
    (("volume", "create", "x", "--size", "1M", "--extent-size", "96K"), ("extent",)),
    (("volume", "create", "bad/name", "--size", "1M"), ("name",)),
    (("volume", "create", "-", "--size", "1M"), ()),
    (("volume", "create", "v", "--size", "1M"), ("exists",)),
    (("volume", "info", "nope"), ("nope",)),
    (("volume", "info", "bad name"), ("name",)),
    (("volume", "snapshots", "nope"), ("nope",)),
    (("volume", "snapshot", "nope", "s"), ("nope",)),
    (("volume", "snapshot", "v", "s1"), ("s1",)),
    (("volume", "snapshot", "v", "bad@snap"), ("name",)),
    (("volume", "snapshot", "v", "takeover-9"), ("reserved",)),
    (("volume", "export", "nope", "-"), ("nope",)),
    (("volume", "export", "v@nosnap", "-"), ("nosnap",)),
    (("volume", "fork", "v@nosnap", "x"), ("nosnap",)),
    (("volume", "fork", "nope@s1", "x"), ("nope",)),
    (("volume", "fork", "v", "x"), ("snap",)),
    (("volume", "fork", "v@s1", "w"), ("exists",)),
    (("volume", "fork", "v@s1", "v"), ("exists",)),
    (("volume", "restore", "v", "nosnap"), ("nosnap",)),
    (("volume", "restore", "nope", "s1"), ("nope",)),
    (("volume", "rm", "nope"), ("nope",)),
    (("volume", "rm", "v@nosnap"), ("nosnap",)),
    (("volume", "import", "nope", "-"), ("nope",)),
]


@pytest.mark.parametrize(("args", "needles"), BAD_INPUT, ids=lambda a: " ".join(a))
def test_bad_input_changes_nothing(loft: Loft, args: tuple[str, ...], needles: tuple[str, ...]):
    before = loft.state()
    assert_one_error(loft(*args, input=b""), *needles)
    assert loft.state() == before


def test_import_larger_than_volume(loft: Loft, tmp_path: Path) -> None:
    before = loft.state()
    big = tmp_path / "big.img"
    big.write_bytes(b"\x11" * (512 * KIB + 4096))
    assert_one_error(loft("volume", "import", "w", str(big)), "bytes", "'w'")
    assert loft.state() == before
    # From stdin the size is unknown until the data runs past the end of the volume.
    assert_one_error(loft("volume", "import", "v", "-", input=big.read_bytes()), "larger")
    assert loft.state() == before
    assert_one_error(loft("volume", "import", "v", str(tmp_path / "missing.img")), "missing")
    assert loft.state() == before


def test_import_of_a_special_file_is_refused_up_front(loft: Loft, tmp_path: Path) -> None:
    """A device or a pipe has no size to check and may never end: only a regular file
    (or stdin) is imported, refused before anything is read, nothing changed."""
    before = loft.state()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it must not wait for a writer
    link = tmp_path / "zero"
    link.symlink_to("/dev/zero")
    for source in ("/dev/urandom", "/dev/zero", str(fifo), str(link)):
        assert_one_error(loft("volume", "import", "v", source), "not a regular file")
        assert loft.state() == before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


STORE_COMMANDS = [
    ("volume", "create", "x", "--size", "1M"),
    ("volume", "import", "v", "-"),
    ("volume", "export", "v", "-"),
    ("volume", "snapshot", "v", "s2"),
    ("volume", "restore", "v", "s1"),
    ("volume", "rm", "v"),
    ("volume", "gc"),
]


@pytest.fixture(scope="module")
def closed_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Loft, Loft, int]:
    """(working CLI, CLI whose S3 endpoint refuses connections, its port): one catalog."""
    tmp_path = tmp_path_factory.mktemp("unreachable")
    port = _closed_port()
    env = {
        "LOFT_DATA_DIR": str(tmp_path / "data"),
        "LOFT_CHUNKS": f"s3://loft/x?endpoint=http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
    }
    # Set up through a working store: same catalog, a file store.
    good = Loft({**env, "LOFT_CHUNKS": f"file://{tmp_path / 'chunks'}"})
    good.ok("volume", "create", "v", "--size", "512K", "--extent-size", "64K")
    good.ok("volume", "snapshot", "v", "s1")
    return good, Loft(env), port


@pytest.mark.parametrize("args", STORE_COMMANDS, ids=lambda a: " ".join(a))
def test_unreachable_chunk_store(
    closed_store: tuple[Loft, Loft, int], args: tuple[str, ...]
) -> None:
    """The catalog is fine but the S3 endpoint refuses connections: fail fast and clearly."""
    good, loft, port = closed_store
    listing = good.ok("volume", "ls", "--json").stdout
    snaps = good.ok("volume", "snapshots", "v", "--json").stdout
    result = loft(*args, input=b"\x01" * 4096)
    assert_one_error(result)
    text = result.stderr.lower()
    assert str(port) in text or "reach" in text or "connect" in text, result.stderr
    assert good.ok("volume", "ls", "--json").stdout == listing
    assert good.ok("volume", "snapshots", "v", "--json").stdout == snaps


@pytest.fixture(scope="module")
def s3_volumes(seaweedfs: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Loft, Any]:
    """A data dir on SeaweedFS with volume v (data + snapshot s1)."""
    tmp_path = tmp_path_factory.mktemp("creds")
    env = {"LOFT_DATA_DIR": str(tmp_path / "data"), "LOFT_CHUNKS": seaweedfs.fresh_url("creds")}
    good = Loft(env)  # the session's real credentials are in the environment
    good.ok("volume", "create", "v", "--size", "512K", "--extent-size", "64K")
    good.ok("volume", "import", "v", "-", input=b"\x33" * (70 * KIB))
    good.ok("volume", "snapshot", "v", "s1")
    return good, good.state()


@pytest.mark.parametrize("args", STORE_COMMANDS, ids=lambda a: " ".join(a))
def test_wrong_credentials(s3_volumes: tuple[Loft, Any], args: tuple[str, ...]) -> None:
    good, before = s3_volumes
    bad = Loft({**good.env, "AWS_ACCESS_KEY_ID": "wrong", "AWS_SECRET_ACCESS_KEY": "wrong-secret"})
    result = bad(*args, input=b"\x01" * 4096)
    assert_one_error(result, "credentials")
    assert good.state() == before


def test_catalog_unreachable(tmp_path: Path) -> None:
    port = _closed_port()
    loft = Loft(
        {
            "LOFT_DATA_DIR": str(tmp_path / "data"),
            "LOFT_CHUNKS": f"file://{tmp_path / 'chunks'}",
            "LOFT_CATALOG_URL": f"postgresql://nobody@127.0.0.1:{port}/loft",
        }
    )
    assert_one_error(loft("volume", "ls"), "catalog")
    assert not os.path.exists(tmp_path / "chunks" / "chunks")
