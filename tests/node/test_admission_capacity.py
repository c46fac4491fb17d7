"""Admission, without a node: capacity from the settings against the host's memory and
CPUs, refusals that say what is committed, and the disk reserve."""

from __future__ import annotations

from pathlib import Path

import pytest

from loft.blockstore.reserve import DiskReserve
from loft.config import Settings, SettingsError
from loft.node.admission import Admission, Capacity, NotAdmitted, capacity_from, host_memory
from loft.runtime.spec import Limits

G = 1 << 30


def _settings(**env: str) -> Settings:
    return Settings.from_env({"LOFT_DATA_DIR": "/nonexistent", **env})


def test_admission_capacity_defaults_and_settings() -> None:
    assert capacity_from(_settings(), memory=8 * G, cpus=2) == Capacity(8 * G, 8.0)
    assert capacity_from(_settings(LOFT_NODE_MEMORY="150%", LOFT_NODE_CPUS="100%"),
                         memory=8 * G, cpus=2) == Capacity(12 * G, 2.0)  # fmt: skip
    assert capacity_from(_settings(LOFT_NODE_MEMORY="3G", LOFT_NODE_CPUS="1.5"),
                         memory=8 * G, cpus=2) == Capacity(3 * G, 1.5)  # fmt: skip
    assert host_memory() > 0


@pytest.mark.parametrize(
    "env",
    [{"LOFT_NODE_MEMORY": "lots"}, {"LOFT_NODE_MEMORY": "0%"}, {"LOFT_NODE_CPUS": "-2"},
     {"LOFT_NODE_CPUS": "x%"}, {"LOFT_EGRESS_DENY": "10.0.0.0/8,not-an-address"}],
)  # fmt: skip
def test_admission_bad_settings_are_refused_clearly(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as info:
        _settings(**env)
    assert next(iter(env)) in info.value.message and info.value.hint


def test_admission_refuses_beyond_capacity_saying_what_is_committed(tmp_path: Path) -> None:
    adm = Admission(Capacity(4 * G, 4.0), DiskReserve(tmp_path, "0"))
    one = Limits(memory=1 * G, cpus=1.0)
    adm.check("a", one, [one, one, one])  # exactly full: admitted
    with pytest.raises(NotAdmitted) as info:
        adm.check("big", Limits(memory=2 * G, cpus=0.5), [one, one, one])
    assert "2G" in info.value.message and "3G of this node's 4G" in info.value.message
    assert "3 workspaces" in info.value.message and "LOFT_NODE_MEMORY" in str(info.value.hint)
    with pytest.raises(NotAdmitted, match=r"not enough CPU.*3.5 of this node's 4 CPUs"):
        adm.check("cpu", Limits(memory=16 << 20, cpus=1.0), [Limits(memory=G, cpus=3.5)])


def test_admission_refuses_under_the_disk_reserve(tmp_path: Path) -> None:
    adm = Admission(Capacity(4 * G, 2.0), DiskReserve(tmp_path, "99.99%"))
    with pytest.raises(NotAdmitted, match=r"data disk .* under its reserve"):
        adm.check("a", Limits(memory=G), [])
