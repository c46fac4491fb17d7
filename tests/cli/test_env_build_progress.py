"""The build's progress bars: the builder's events drawn by the CLI on a terminal only."""

from __future__ import annotations

import io
import sys

import pytest
from rich.console import Console

from loft.cli.env_build import _BuildBars, _progress
from loft.envstore.progress import BytesFetched, TaskAdvanced, TasksFinished, TaskStarted


def test_events_become_bars_that_go_away_when_the_tasks_finish() -> None:
    out = io.StringIO()
    bars = _BuildBars(Console(file=out, force_terminal=True, width=100))
    for phase in range(2):  # a second realise draws fresh bars
        bars(TaskStarted("downloading", 2))
        bars(TaskStarted("unpacking", 2))
        bars(TaskAdvanced("downloading"))
        bars(BytesFetched("downloading", 1_234_567))
        bars(TaskAdvanced("unpacking"))
        shown = bars._bars.tasks
        assert [(t.description, t.completed, t.total) for t in shown] == [
            ("downloading", 1, 2),
            ("unpacking", 1, 2),
        ], phase
        assert [t.fields["info"] for t in shown] == ["1.2 MB", ""]
        bars(TasksFinished())
        assert bars._bars.tasks == [] and not bars._bars.live.is_started
    assert "downloading" in out.getvalue() and "1/2" in out.getvalue()
    bars(TasksFinished())  # finishing with nothing started draws nothing


def test_no_bars_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert _progress() is None
