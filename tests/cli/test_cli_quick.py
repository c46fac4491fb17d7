"""The quick path: ``loft ls`` and ``loft snap`` without click, the same commands as the
click group's, and click for anything they do not read plainly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from loft.cli.group import main
from loft.cli.quick import QUICK, SNAP

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("argv", "values"),
    [
        (["ws"], {"name": "ws", "snapshot": "", "as_json": False}),
        (["ws", "s1"], {"name": "ws", "snapshot": "s1", "as_json": False}),
        (["--json", "ws", "s1"], {"name": "ws", "snapshot": "s1", "as_json": True}),
        (["ws", "--json"], {"name": "ws", "snapshot": "", "as_json": True}),
        ([], None),  # missing NAME: click says so
        (["ws", "s1", "extra"], None),
        (["ws", "--help"], None),
        (["-h"], None),
        (["ws", "--jsn"], None),
        (["--", "ws"], None),
    ],
)
def test_quick_snap_reads_plain_arguments_and_leaves_the_rest_to_click(
    argv: list[str], values: dict[str, object] | None
) -> None:
    assert SNAP.parse(argv) == values


def test_quick_commands_are_the_groups_commands() -> None:
    """What the click group runs for each quick command is built from the same
    declaration: same parameters, same body."""
    ctx = main.make_context("loft", ["--help"], resilient_parsing=True)
    for name, quick in QUICK.items():
        command = main.get_command(ctx, name)
        assert command is not None
        assert command.callback is quick.run
        declared = [(a.name, a.required) for a in quick.args]
        declared += [(f.dest, False) for f in quick.flags]
        assert [(p.name, p.required) for p in command.params] == declared


def test_quick_commands_help_comes_from_click() -> None:
    out = CliRunner().invoke(main, ["snap", "--help"], prog_name="loft").output
    assert "Usage: loft snap [OPTIONS] NAME [SNAPSHOT]" in out
    assert "--json" in out
    assert "writers pause only while its disk is committed" in out


@pytest.fixture
def dead_endpoint(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a CLI whose API endpoint refuses connections."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "LOFT_URL": f"http://127.0.0.1:{port}",
        "LOFT_TOKEN": "x",
        "XDG_CONFIG_HOME": str(tmp_path),
    }
    yield env


def _loft(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``loft ARGS``, printing at exit whether click was imported."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('click imported:', 'click' in sys.modules))\n"
        f"sys.argv = ['loft', *{list(args)!r}]\n"
        "from loft.cli import run\n"
        "run()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("argv", [["snap", "ws", "s1"], ["ls", "--json"]])
def test_quick_path_imports_no_click_and_reports_errors_as_the_group_does(
    dead_endpoint: dict[str, str], argv: list[str]
) -> None:
    quick = _loft(dead_endpoint, *argv)
    assert quick.returncode == 1
    assert "click imported: False" in quick.stdout
    assert quick.stderr.startswith("loft: error: ")
    # The group, asked for the same command, says the same.
    grouped = CliRunner().invoke(main, argv, env=dead_endpoint)
    assert grouped.exit_code == 1
    assert quick.stderr.splitlines()[0] in grouped.output


def test_quick_path_checks_names_before_any_request(dead_endpoint: dict[str, str]) -> None:
    r = _loft(dead_endpoint, "snap", "ws", "bad/name")
    assert r.returncode == 1
    assert "loft: error: bad snapshot name 'bad/name'" in r.stderr


def test_click_takes_what_the_quick_path_does_not_read(dead_endpoint: dict[str, str]) -> None:
    r = _loft(dead_endpoint, "snap", "ws", "--help")
    assert r.returncode == 0
    assert "Usage: loft snap" in r.stdout
    assert "click imported: True" in r.stdout
    r = _loft(dead_endpoint, "snap")
    assert r.returncode == 2
    assert "Missing argument 'NAME'" in r.stderr
