"""A ``[run] command``'s kept output: bounded however much the command writes, the
newest bytes kept, and a follower that sees every chunk once, none lost between the
tail it read and what came after."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loft.node import runcommand
from loft.node.runcommand import RunLog


@pytest.fixture
def small_keep(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(runcommand, "KEEP", 1000)
    return 1000


def test_a_flood_is_cut_back_to_the_newest_bytes(tmp_path: Path, small_keep: int) -> None:
    log = RunLog(tmp_path / "w.log")
    written = b""
    for i in range(500):
        chunk = f"line {i}\n".encode()
        log.append(chunk)
        written += chunk
        assert log.path.stat().st_size <= 2 * small_keep + len(chunk)
    assert log.tail(small_keep) == written[-small_keep:]
    assert log.path.stat().st_mode & 0o777 == 0o600


@settings(max_examples=30, deadline=None, derandomize=True)
@given(chunks=st.lists(st.binary(min_size=1, max_size=300), max_size=40), split=st.integers(0, 40))
def test_a_follower_sees_every_chunk_once(
    tmp_path_factory: pytest.TempPathFactory, chunks: list[bytes], split: int
) -> None:
    log = RunLog(tmp_path_factory.mktemp("log") / "w.log")
    before, after = chunks[:split], chunks[split:]
    for c in before:
        log.append(c)
    seen: list[bytes] = []
    kept, unfollow = log.follow(1 << 20, seen.append)
    writer = threading.Thread(target=lambda: [log.append(c) for c in after])
    writer.start()
    writer.join()
    unfollow()
    log.append(b"after unfollow")
    assert kept == b"".join(before) and seen == after


def test_no_output_yet_is_empty(tmp_path: Path) -> None:
    assert RunLog(tmp_path / "none.log").tail(100) == b""
