"""Public surfaces: __all__ matches, the registry and the authorization file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import loft.nbd.server as server
from loft.nbd.backends.file import FileBackend
from loft.nbd.protocol import NBDError
from loft.nbd.server import Authorizer, ExportRegistry, load_authz


def test_server_all_matches_public_names() -> None:
    public = {n for n in dir(server) if not n.startswith("_")}
    assert set(server.__all__) == public


def test_registry_default_and_duplicates(tmp_path: Path) -> None:
    img = tmp_path / "a.img"
    img.write_bytes(bytes(4096))
    reg = ExportRegistry()
    b = FileBackend(img)
    reg.add("a", b, "first")
    assert reg.lookup("") is reg.lookup("a")
    assert reg.lookup("nope") is None
    with pytest.raises(NBDError):
        reg.add("a", b)
    reg.close()


def test_authz_file_json_and_toml(tmp_path: Path) -> None:
    j = tmp_path / "a.json"
    j.write_text(json.dumps({"clients": {"alice": ["vol-a", "vol-a@*"]}}))
    t = tmp_path / "a.toml"
    t.write_text('[clients]\nbob = ["vol-b"]\n')
    a = load_authz(j)
    assert a.allows("alice", "vol-a") and a.allows("alice", "vol-a@snap1")
    assert not a.allows("alice", "vol-b") and not a.allows("mallory", "vol-a")
    assert a.allows(None, "anything")  # trusted local client
    assert load_authz(t).allows("bob", "vol-b")
    bad = tmp_path / "bad.json"
    bad.write_text('{"clients": {"x": "not-a-list"}}')
    with pytest.raises(NBDError):
        load_authz(bad)
    assert Authorizer({}).allows("x", "y") is False
