"""What a user sees never carries a secret: catalog and chunk-store URLs with passwords
in errors, the `loft up` banner and its logs; and `loft up`'s JSON logs keep a library's
messages whole, with one line for a catalog migration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)
SECRET = "s3cr3t-Pa55"
LOFT = [str(Path(sys.executable).parent / "loft")]


def loft(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LOFT, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def test_catalog_password_not_in_errors(tmp_path: Path) -> None:
    for url in (
        f"postgresql://loft:{SECRET}@127.0.0.1:1/loft",
        f"postgresql://127.0.0.1:1/loft?user=loft&password={SECRET}",
    ):
        proc = loft({"LOFT_DATA_DIR": str(tmp_path / "d"), "LOFT_CATALOG_URL": url}, "volume", "ls")
        assert proc.returncode == 1 and "catalog" in proc.stderr
        assert SECRET not in proc.stderr + proc.stdout


def test_chunk_store_password_not_in_errors(tmp_path: Path) -> None:
    env = {
        "LOFT_DATA_DIR": str(tmp_path / "d"),
        "LOFT_CATALOG_URL": f"sqlite:///{tmp_path / 'c.db'}",
        "LOFT_CHUNKS": f"s3://b/p?endpoint=http://AKIA:{SECRET}@127.0.0.1:1",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
    }
    proc = loft(env, "volume", "create", "v", "--size", "1M")
    assert proc.returncode == 1 and "127.0.0.1:1" in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout


@pytest.mark.postgres
def test_loft_up_banner_and_logs_show_no_password(tmp_path: Path, postgres_db_url: str) -> None:
    url = postgres_db_url.replace("postgres@", f"postgres:{SECRET}@", 1)
    assert SECRET in url
    env = {
        **os.environ,
        "LOFT_DATA_DIR": str(tmp_path / "d"),
        "LOFT_CATALOG_URL": url,
        "LOFT_CHUNKS": f"file://{tmp_path / 'chunks'}",
    }
    err = tmp_path / "up.err"
    with open(err, "wb") as f:
        proc = subprocess.Popen([*LOFT, "up"], env=env, stdout=f, stderr=f)
    try:
        deadline = time.monotonic() + 60
        while "loft is up" not in err.read_text():
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    text = err.read_text()
    assert SECRET not in text and "***" in text
    logs = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    migrations = [e for e in logs if e.get("event") == "catalog.migrate"]
    assert len(migrations) == 1 and migrations[0]["to"]
    assert not [e for e in logs if e["logger"].startswith("alembic")], "alembic chatter"
    assert all(isinstance(e.get("msg", ""), str) for e in logs), "messages stay whole"
