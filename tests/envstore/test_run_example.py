"""`loft env run`: the example environment at /usr in bubblewrap, real binaries inside."""

from __future__ import annotations

import os

import pytest
from envbuild_support import Example, example, loft
from envbuild_support import env_run as run

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return example(tmp_path_factory)


def test_python_requests_and_tls_context_with_ca_bundle(ex: Example) -> None:
    code = (
        "import requests, ssl, certifi\n"
        "ctx = ssl.create_default_context()\n"
        "ctx.load_verify_locations('/etc/ssl/certs/ca-certificates.crt')\n"
        "print(requests.__version__, len(ctx.get_ca_certs()), requests.__file__)\n"
    )
    rc, out, err = run(ex, "python3", "-c", code)
    assert rc == 0, err
    version, ncerts, where = out.split()
    assert version == "2.32.3"
    assert int(ncerts) > 100  # Debian's Mozilla bundle, as update-ca-certificates builds it
    assert where == "/usr/lib/python3/dist-packages/requests/__init__.py"
    assert err == ""  # no "could not find platform libraries" from python's getpath


@pytest.mark.parametrize(
    ("cmd", "expect"),
    [
        (["git", "--version"], "git version 2."),
        (["curl", "--version"], "curl 7."),
        (["node", "-e", "console.log(require('left-pad')('7', 3, '0'))"], "007"),
        (["sh", "-c", "readlink -f /bin/sh"], "dash"),
        (["awk", "BEGIN { print 1 + 1 }"], "2"),  # an update-alternatives link
    ],
)
def test_tools_run(ex: Example, cmd: list[str], expect: str) -> None:
    rc, out, err = run(ex, *cmd)
    assert rc == 0, err
    assert expect in out


def test_exit_status_propagates(ex: Example) -> None:
    assert run(ex, "sh", "-c", "exit 7")[0] == 7
    assert run(ex, "false")[0] == 1


def test_only_the_closure_is_visible(ex: Example) -> None:
    rc, out, err = run(ex, "ls", "/nix/store")
    assert rc == 0, err
    closure = ex.store.closure([ex.lock.env.path])
    assert sorted(out.split()) == sorted(os.path.basename(p) for p in closure)
    # The fixed-output copies of the artefacts are in the store but not in the closure.
    assert not any(n.endswith(".deb") for n in out.split())
    assert len(ex.store.all_paths()) > len(closure)


def test_sandbox_shape(ex: Example) -> None:
    script = (
        "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; "
        "echo home=$HOME; touch $HOME/f && echo home-writable; "
        "touch /usr/x 2>/dev/null || echo usr-readonly; id -un; "
        "readlink /bin /lib /lib64 /sbin | tr '\\n' ' '"
    )
    rc, out, err = run(ex, "sh", "-c", script)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "lo" and "home=/home/runner" in lines
    assert "home-writable" in lines and "usr-readonly" in lines and "runner" in lines
    assert lines[-1].split() == ["usr/bin", "usr/lib", "usr/lib64", "usr/sbin"]


def test_run_by_store_path_and_unknown_env(ex: Example) -> None:
    r = loft(["env", "run", ex.lock.env.path, "--", "true"], ex.data_dir, ex.project)
    assert r.returncode == 0, r.stderr
    missing = "/nix/store/" + "0" * 32 + "-loft-env"
    r = loft(["env", "run", missing, "--", "true"], ex.data_dir, ex.project)
    assert r.returncode == 1 and "is not a valid path" in r.stderr
