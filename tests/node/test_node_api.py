"""The node API over its real socket: curl speaks it, every answer is typed, the OpenAPI
description is what the code serves, and bad requests get a clear 4xx."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodetool import Node

from loft.node import api
from loft.node.client import ControlError, call

pytestmark = pytest.mark.timeout(120)
SPEC = Path(__file__).resolve().parents[2] / "docs" / "node-api.json"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path, "node-a")
    n.loft("volume", "create", "v", "--size", "16M")
    n.serve()
    yield n
    if n.proc is not None and n.proc.poll() is None:
        assert n.stop() == 0


def curl(node: Node, method: str, path: str, body: str | None = None) -> tuple[int, object]:
    sock = node.sock.with_name("control.sock")
    cmd = ["curl", "-s", "-m", "20", "--unix-socket", str(sock), "-X", method]
    cmd += ["-w", "\\n%{http_code}", f"http://localhost{path}"]
    if body is not None:
        cmd += ["-H", "content-type: application/json", "--data-binary", body]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout
    text, _, code = out.rpartition("\n")
    return int(code), json.loads(text)


def test_node_api_speaks_http_to_curl(served: Node) -> None:
    code, answer = curl(served, "GET", "/v1/volumes/v")
    assert code == 200 and isinstance(answer, dict)
    assert answer["name"] == "v" and answer["served_by"].endswith("control.sock")
    code, answer = curl(served, "POST", "/v1/volumes/v/snapshots", '{"name": "s1"}')
    assert (code, answer) == (200, {"snapshot": "s1", "version": 0})  # nothing written


def test_node_api_typed_client_round_trip(served: Node) -> None:
    path = str(served.sock.with_name("control.sock"))
    assert call(path, api.PingRequest(), api.PingAnswer).served == []
    assert call(path, api.CommitRequest("v"), api.CommitAnswer).version == 0
    assert call(path, api.PingRequest(), api.PingAnswer).served == ["v"]
    with pytest.raises(ControlError, match="not served here"):
        call(path, api.InfoRequest("nope"), api.InfoAnswer)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("GET", "/v1/nothing", None, 404, "no such endpoint"),
        ("PUT", "/v1/volumes/v", None, 405, "not allowed"),
        ("POST", "/v1/volumes/v/snapshots", "{not json", 400, "bad snapshot request"),
        ("POST", "/v1/volumes/v/snapshots", '{"name": 5}', 400, "name: expected str"),
        ("POST", "/v1/volumes/v/snapshots", "{}", 400, "name: required"),
        ("POST", "/v1/volumes/v/snapshots", '{"name": "a", "x": 1}', 400, "unknown field"),
        ("POST", "/v1/volumes/v/snapshots", '["a"]', 400, "expected a JSON object"),
        ("POST", "/v1/volumes/v/commit", '{"volume": "w"}', 400, "path and the body"),
        ("POST", "/v1/volumes/ghost/commit", None, 404, "not served here"),
        ("POST", "/v1/volumes/v/snapshots", '{"name": "' + "x" * 70000 + '"}', 413, "over"),
    ],
)
def test_node_api_refuses_bad_requests_clearly(
    served: Node, method: str, path: str, body: str | None, status: int, says: str
) -> None:
    code, answer = curl(served, method, path, body)
    assert code == status
    assert isinstance(answer, dict) and says in answer["error"], answer
    # The service keeps serving after every refusal.
    assert curl(served, "GET", "/v1/ping")[0] == 200


def test_node_api_openapi_is_served_and_committed(served: Node) -> None:
    code, spec = curl(served, "GET", "/openapi.json")
    assert code == 200 and spec == api.openapi()
    assert json.loads(SPEC.read_text()) == spec, "regenerate docs/node-api.json (see docs)"
    ops = {(m, p) for p, item in spec["paths"].items() for m in item}  # type: ignore[index]
    assert ops == {(op.method.lower(), op.path) for op in api.OPERATIONS}
