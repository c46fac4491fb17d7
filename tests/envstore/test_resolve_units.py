"""Resolver details: spec splitting, error distillation, Debian specifics with real apt."""

from __future__ import annotations

from pathlib import Path

import pytest

from loft.envstore.build import store_name
from loft.envstore.resolve_debian import AptConfig, DebianResolveError, resolve_debian
from loft.envstore.resolve_npm import _npm_error, split_spec
from loft.envstore.resolve_pypi import PythonTarget, _pip_error


def test_npm_spec_split() -> None:
    assert split_spec("left-pad@1.3.0") == ("left-pad", "1.3.0")
    assert split_spec("@types/node@^20") == ("@types/node", "^20")
    assert split_spec("@types/node") == ("@types/node", "latest")
    assert split_spec("lodash") == ("lodash", "latest")


def test_error_lines_name_the_culprit() -> None:
    pip = (
        "ERROR: Could not find a version that satisfies the requirement requests==0.0.999 "
        "(from versions: 2.0.0)\nERROR: No matching distribution found for requests==0.0.999\n"
    )
    assert _pip_error(pip, []) == "no binary wheel on PyPI matches 'requests==0.0.999'"
    npm = "npm error code E404\nnpm error 404  'nope@1.0.0' could not be found or you ...\n"
    assert _npm_error(npm, []) == "npm package 'nope@1.0.0' not found in the registry"


def test_store_names_are_valid() -> None:
    assert store_name("python3.11_3.11.2-6+deb12u6_amd64.deb") == (
        "python3.11_3.11.2-6+deb12u6_amd64.deb"
    )
    assert store_name("git-1:2.39.5-0+deb12u2") == "git-1_2.39.5-0+deb12u2"
    assert store_name("foo-1.0~rc1") == "foo-1.0_rc1"
    assert store_name(".hidden") == "hidden"


def test_debian_target_is_debians_python() -> None:
    t = PythonTarget.debian()
    assert t.version.startswith("3.") and t.abi == "cp" + t.version.replace(".", "")
    assert t.platform.startswith("manylinux_2_")


@pytest.fixture(scope="module")
def apt(tmp_path_factory: pytest.TempPathFactory) -> AptConfig:
    root = tmp_path_factory.getbasetemp() / "loft-apt-state"
    root.mkdir(exist_ok=True)
    return AptConfig.for_host(root)


@pytest.mark.timeout(120)
def test_debian_closure_is_essential_plus_request(apt: AptConfig) -> None:
    closure = {a.name: a for a in resolve_debian(["jq"], apt)}
    assert {"jq", "libjq1", "dash", "coreutils", "base-files", "libc6"} <= set(closure)
    assert "apt" not in closure  # libapt flags itself essential; the archive does not
    assert all(len(a.sha256) == 64 and a.url.startswith("http://deb.debian.org/") for a in
               closure.values())  # fmt: skip
    assert closure["dash"].essential and not closure["jq"].essential
    # Only Debian's archive is a source: the private sources list names nothing else.
    sources = (apt.root / "sources.list").read_text()
    assert sources.count("deb ") == 3 and "deb.debian.org" in sources
    # No recommends: jq recommends nothing heavy, but curl recommends ca-certificates.
    assert "ca-certificates" not in {a.name for a in resolve_debian(["curl"], apt)}


@pytest.mark.timeout(120)
def test_virtual_package_with_many_providers_is_refused(apt: AptConfig, tmp_path: Path) -> None:
    with pytest.raises(DebianResolveError, match=r"'awk' is virtual; pick one of: .*mawk"):
        resolve_debian(["awk"], apt)


@pytest.mark.timeout(120)
def test_binary_wheels_for_debians_python() -> None:
    from loft.envstore.resolve_pypi import resolve_pypi

    t = PythonTarget.debian()
    assert "manylinux2014_x86_64" in t.platforms() or "manylinux2014_aarch64" in t.platforms()
    (w,) = resolve_pypi(["pyyaml==6.0.2"], t)
    assert w.filename.startswith(f"PyYAML-6.0.2-{t.abi}-{t.abi}-manylinux")
