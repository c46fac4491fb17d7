"""loft.lock: a deterministic, versioned JSON document that round-trips."""

from __future__ import annotations

import base64
import json

import pytest

from loft.envstore.lock import (
    LOCK_VERSION,
    Lock,
    LockedArtefact,
    LockedPath,
    LockError,
    dumps,
    loads,
)
from loft.envstore.spec import Spec
from loft.envstore.store_path import fixed_output_path

SHA = "ab" * 32
SRI = "sha512-" + base64.b64encode(bytes(range(64))).decode()


def sample() -> Lock:
    out = LockedPath(
        "/nix/store/" + "a" * 32 + "-npm-left-pad-1.3.0", "sha256:" + "0" * 52, 1234,
        "npm-left-pad-1.3.0",
    )  # fmt: skip
    art = LockedArtefact(
        kind="npm", name="left-pad", version="1.3.0",
        url="https://registry.npmjs.org/left-pad/-/left-pad-1.3.0.tgz",
        registry_hash=SRI, file_sha256=SHA, file_name="left-pad-1.3.0.tgz",
        fixed_path=fixed_output_path(SHA, "left-pad-1.3.0.tgz"), output=out,
        location="node_modules/left-pad", bin={"lp": "bin/lp.js"}, size=5000,
    )  # fmt: skip
    env = LockedPath("/nix/store/" + "c" * 32 + "-loft-env", "sha256:" + "1" * 52, 99, "loft-env")
    return Lock(Spec(npm=("left-pad@1.3.0",)), {"python": "3.11"}, (art,), (out,), env)


def test_round_trip_and_determinism() -> None:
    lock = sample()
    text = dumps(lock)
    assert loads(text) == lock
    assert dumps(loads(text)) == text
    doc = json.loads(text)
    assert doc["version"] == LOCK_VERSION
    # Every produced path is under "store_path" with its NAR hash, for lock consumers.
    assert doc["env"]["store_path"].endswith("-loft-env")
    assert doc["artefacts"][0]["output"]["nar_hash"].startswith("sha256:")
    assert lock.paths()[-1] == lock.env.path


def test_other_version_refused() -> None:
    doc = json.loads(dumps(sample()))
    doc["version"] = 99
    with pytest.raises(LockError, match="version 99"):
        loads(json.dumps(doc), source="x.lock")


@pytest.mark.parametrize("mutate", ["notjson", "list", "noenv", "badkind"])
def test_malformed_lock_is_one_error(mutate: str) -> None:
    doc = json.loads(dumps(sample()))
    if mutate == "notjson":
        text = "{"
    elif mutate == "list":
        text = "[]"
    elif mutate == "noenv":
        del doc["env"]
        text = json.dumps(doc)
    else:
        doc["artefacts"][0]["kind"] = "rpm"
        text = json.dumps(doc)
    with pytest.raises(LockError, match=r"^x\.lock: "):
        loads(text, source="x.lock")


URLS = [
    "file:///etc/shadow", "FILE:///etc/shadow", "File:/etc/shadow", "file:shadow",
    "ftp://deb.debian.org/x.deb", "gopher://h:70/1x", "data:application/gzip;base64,H4sI",
    "jar:file:///x.jar!/y", "local/left-pad.tgz", "/srv/left-pad.tgz", "//evil/x.tgz",
    " https://h/x.tgz", "https://h/x.tgz\r\nX-Evil: 1", "<URL:file:///etc/shadow>",
    "http://", "https:///etc/shadow", "", "https://h/" + "a" * 5000, "hTtPs\t://h/x",
]  # fmt: skip


@pytest.mark.parametrize("url", URLS)
def test_lock_refuses_non_http_urls(url: str) -> None:
    doc = json.loads(dumps(sample()))
    doc["artefacts"][0]["url"] = url
    with pytest.raises(LockError, match=r"^x\.lock: artefact 0: .*URL") as e:
        loads(json.dumps(doc), source="x.lock")
    assert "nothing was fetched" in str(e.value)


@pytest.mark.parametrize("url", ["HTTPS://registry.npmjs.org/l.tgz", "http://127.0.0.1:8/l.tgz"])
def test_lock_accepts_http_urls_in_any_case(url: str) -> None:
    doc = json.loads(dumps(sample()))
    doc["artefacts"][0]["url"] = url
    assert loads(json.dumps(doc)).artefacts[0].url == url


# (field path, value): every field that reaches a URL, a path, a name or a bound.
HOSTILE = [
    ("location", "node_modules/../../../etc"), ("location", "../outside"),
    ("location", "/etc/cron.d"), ("location", "node_modules/a/../../../x"),
    ("location", "node_modules/a\0b"), ("location", "node_modules/" + "a" * 300),
    ("location", "node_modules//a"), ("location", "lib/x"), ("location", "node_modules/."),
    ("location", "node_modules/" + "a/node_modules/" * 300 + "a"), ("location", ""),
    ("name", "../../x"), ("name", "a/b"), ("name", ""), ("name", "a\0"), ("name", "x" * 300),
    ("name", ".hidden"), ("name", 7), ("version", "1.0/../../x"), ("version", "1\0"),
    ("version", ""), ("bin", {"../x": "a.js"}), ("bin", {"x": "../../../etc/shadow"}),
    ("bin", {"x": "/etc/shadow"}), ("bin", {".x": "a.js"}), ("bin", {"a/b": "c.js"}),
    ("bin", {"x": ""}), ("bin", ["x"]), ("file_sha256", "XYZ"), ("file_sha256", "AB" * 32),
    ("registry_hash", "sha512-AAAA"), ("registry_hash", "md5-" + "A" * 24),
    ("registry_hash", ""), ("size", -1), ("size", True), ("size", 1 << 40), ("size", "12"),
    ("fixed_path", "/etc/shadow"), ("fixed_path", "/nix/store/" + "b" * 32 + "-other.tgz"),
    ("file_name", "../x.tgz"), ("file_name", ".x"), ("output.store_path", "/nix/store/../../etc"),
    ("output.store_path", "/nix/store/" + "e" * 32 + "-x"), ("output.name", "a/b"),
    ("output.name", ""), ("output.nar_size", -1), ("output.nar_size", "12"),
    ("output.nar_hash", "md5:00"), ("kind", "rpm"),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), HOSTILE, ids=[f"{f}={v!r:.30}" for f, v in HOSTILE])
def test_lock_refuses_hostile_fields(field: str, value: object) -> None:
    doc = json.loads(dumps(sample()))
    target = doc["artefacts"][0]
    *parents, key = field.split(".")
    for p in parents:
        target = target[p]
    target[key] = value
    with pytest.raises(LockError, match=r"^x\.lock: "):
        loads(json.dumps(doc), source="x.lock")


@pytest.mark.parametrize(("where", "value"), [
    ("env", "/nix/store/" + "c" * 32 + "-../x"), ("env", "/tmp/loft-env"),
    ("layers", "/nix/store/" + "a" * 32 + "-a/b"), ("platform", "3.11/../../x"),
])  # fmt: skip
def test_lock_refuses_hostile_paths_and_platform(where: str, value: str) -> None:
    doc = json.loads(dumps(sample()))
    if where == "platform":
        doc["platform"]["python"] = value
    else:
        (doc[where][0] if where == "layers" else doc[where])["store_path"] = value
    with pytest.raises(LockError, match=r"^x\.lock: "):
        loads(json.dumps(doc), source="x.lock")


def test_lock_refuses_npm_fields_on_a_deb() -> None:
    doc = json.loads(dumps(sample()))
    a = doc["artefacts"][0]
    a.update(kind="deb", registry_hash=f"sha256:{SHA}", bin={})  # keeps its location
    with pytest.raises(LockError, match="npm location"):
        loads(json.dumps(doc), source="x.lock")
