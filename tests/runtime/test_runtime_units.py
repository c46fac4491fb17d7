"""The pure parts of the sandbox runtime: id range allocation, the phase table, the
spec's checks, the saved state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loft.isolation.userns import ENV_RUN_IDS, IdRange
from loft.runtime.errors import PhaseError, WorkspaceError
from loft.runtime.ids import FIRST_HOST_ID, LAST_HOST_ID, allocate_range
from loft.runtime.persist import load_spec, save_spec, spec_from_json, spec_to_json
from loft.runtime.phase import ALLOWED, Command, Phase, check
from loft.runtime.spec import EnvironmentView, ExecRequest, Limits, WindowSize, WorkspaceSpec

ENV = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-loft-env"


def _etc(tmp_path: Path, passwd: str = "", group: str = "") -> Path:
    (tmp_path / "passwd").write_text(f"root:x:0:0::/root:/bin/sh\n{passwd}")
    (tmp_path / "group").write_text(f"root:x:0:\n{group}")
    return tmp_path


def test_ids_first_free_aligned_range(tmp_path: Path) -> None:
    etc = _etc(tmp_path)
    first = allocate_range([], etc)
    assert first == IdRange(FIRST_HOST_ID, 65536)
    second = allocate_range([first], etc)
    assert second.host == FIRST_HOST_ID + 65536
    # A gap left by a removed workspace is reused.
    third = allocate_range([second], etc)
    assert third == first


def test_ids_skip_unaligned_and_overlapping_ranges(tmp_path: Path) -> None:
    odd = IdRange(FIRST_HOST_ID + 100, 65536)  # straddles the first two blocks
    got = allocate_range([odd], _etc(tmp_path))
    assert got.host == FIRST_HOST_ID + 2 * 65536


def test_ids_skip_host_users_and_groups(tmp_path: Path) -> None:
    etc = _etc(tmp_path, passwd=f"svc:x:{FIRST_HOST_ID + 5}:0::/:/bin/false\n",
               group=f"grp:x:{FIRST_HOST_ID + 65536 + 7}:\n")  # fmt: skip
    assert allocate_range([], etc).host == FIRST_HOST_ID + 2 * 65536


def test_ids_never_the_env_run_range_and_refused_when_full(tmp_path: Path) -> None:
    etc = _etc(tmp_path)
    every = [IdRange(h, 65536) for h in range(FIRST_HOST_ID, LAST_HOST_ID, 65536)]
    with pytest.raises(WorkspaceError, match="no free host id range"):
        allocate_range(every, etc)
    got = allocate_range(every[:-1], etc)
    assert got == every[-1] and got.host + got.size <= ENV_RUN_IDS.host


def test_phase_table_refuses_illegal_commands() -> None:
    assert ALLOWED[Command.EXEC] == {Phase.RUNNING}
    check("w", Command.STOP, Phase.CREATED)
    for command, phases in ALLOWED.items():
        for phase in set(Phase) - phases:
            with pytest.raises(PhaseError, match=f"is {phase.value}"):
                check("w", command, phase)
    assert set(ALLOWED) == set(Command)


def _spec(tmp_path: Path, **kw: object) -> WorkspaceSpec:
    env = EnvironmentView(tmp_path / "store", ENV, (ENV,))
    return WorkspaceSpec(
        **{
            "id": "ws-1",
            "rootfs": tmp_path / "mnt",
            "env": env,
            "ids": IdRange(FIRST_HOST_ID),
            **kw,
        }
    )  # type: ignore[arg-type]


def test_spec_refuses_bad_values(tmp_path: Path) -> None:
    for bad in ("", "UPPER", "../x", "a/b", ".hidden", "x" * 70):
        with pytest.raises(ValueError):
            _spec(tmp_path, id=bad)
    with pytest.raises(ValueError):
        _spec(tmp_path, ids=IdRange(FIRST_HOST_ID, 1000))
    with pytest.raises(ValueError):
        _spec(tmp_path, rootfs=Path("relative"))
    with pytest.raises(ValueError):
        EnvironmentView(tmp_path, ENV, ("/nix/store/other",))
    with pytest.raises(ValueError):
        EnvironmentView(tmp_path, ENV, (ENV, "/nix/store/../etc"))
    for limits in ({"memory": 1024}, {"cpus": 0}, {"pids": 1}):
        with pytest.raises(ValueError):
            Limits(**limits)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ExecRequest(())
    with pytest.raises(ValueError):
        ExecRequest(("id",), user=70000)
    with pytest.raises(ValueError):
        ExecRequest(("id",), cwd="relative")
    with pytest.raises(ValueError):
        ExecRequest(("id",), env={"A=B": "x"})
    with pytest.raises(ValueError):
        WindowSize(0, 80)
    assert _spec(tmp_path, id="my_ws.2").host_name == "my-ws-2"


def test_persist_spec_round_trip_and_format_check(tmp_path: Path) -> None:
    spec = _spec(tmp_path, limits=Limits(memory=2**30, cpus=0.5, pids=99), hostname="box")
    save_spec(tmp_path, spec)
    assert (tmp_path / "workspace.json").stat().st_mode & 0o777 == 0o600
    assert load_spec(tmp_path) == spec
    doc = spec_to_json(spec)
    for bad in ({**doc, "format": 2}, {**doc, "kind": "other"}, {**doc, "ids": {"host": -1}}):
        with pytest.raises(WorkspaceError):
            spec_from_json(bad)
    (tmp_path / "workspace.json").write_text(json.dumps(doc)[:20])
    with pytest.raises(WorkspaceError, match="damaged"):
        load_spec(tmp_path)
