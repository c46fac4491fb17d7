"""/metrics on a separate loopback address without a token, with what the node reports
(commit lag per volume), and refused anywhere but loopback."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from controltool import Harness

from loft.control.server import ControlServer, ServeError


def test_metrics_on_their_own_loopback_address(tmp_path: Path) -> None:
    h = Harness(f"sqlite:///{tmp_path / 'c.db'}", tmp_path, metrics_listen=("127.0.0.1", 0))
    try:
        h.workspace(h.admin(), "w")
        h.node.commit_lag["vol-1"] = 2.5
        url = f"http://127.0.0.1:{h.server.metrics_port}/metrics"
        text = httpx.get(url, timeout=10).text  # no token: only loopback reaches it
        assert 'loft_commit_lag_seconds{volume="vol-1"} 2.5' in text
        assert 'loft_workspaces{state="running"} 1.0' in text
        del h.node.commit_lag["vol-1"]
        assert "vol-1" not in httpx.get(url, timeout=10).text  # gone volumes go
        assert httpx.get(url.replace("/metrics", "/v1/workspaces"), timeout=10).status_code == 404
    finally:
        h.close()


def test_metrics_address_must_be_loopback(control: Harness) -> None:
    with pytest.raises(ServeError) as e:
        ControlServer(control.state, listen=("127.0.0.1", 0), metrics_listen=("0.0.0.0", 0))
    assert e.value.hint
    with pytest.raises(ServeError):
        ControlServer(control.state, listen=("127.0.0.1", 0), preview_listen=("0.0.0.0", 0))
