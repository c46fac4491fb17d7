"""The example environment's CA directory works for OpenSSL's -CApath lookups."""

from __future__ import annotations

import pytest
from envbuild_support import Example, example
from envbuild_support import env_run as run

pytestmark = pytest.mark.timeout(900)  # the first module to ask builds the example env

# Every root in the env, verified against the CA *directory* only: each must be found by
# its subject hash (no bundle file, no default store; expired roots count too).
VERIFY_ALL = (
    "set -e; cd /usr/share/ca-certificates/mozilla; "
    'openssl verify -no_check_time -no-CAfile -no-CAstore -CApath "$1" *.crt'
    ' | grep -c ": OK$" || true; '
    "ls *.crt | wc -l"
)


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return example(tmp_path_factory)


def test_openssl_verify_with_capath_finds_every_root(ex: Example) -> None:
    rc, out, err = run(ex, "sh", "-c", VERIFY_ALL, "sh", "/etc/ssl/certs")
    assert rc == 0, err
    ok, total = (int(x) for x in out.split())
    assert total > 100 and ok == total, (out, err)
    # The links are what c_rehash makes: <8 hex>.<n>, pointing at the certificates.
    rc, out, err = run(ex, "sh", "-c", "ls /etc/ssl/certs | grep -c '^[0-9a-f]\\{8\\}\\.[0-9]$'")
    assert rc == 0 and int(out) >= total - 2, err  # a few roots share a subject hash


def test_without_the_links_capath_finds_nothing(ex: Example) -> None:
    # The same check against an empty directory fails: the links are what makes it pass.
    rc, out, err = run(ex, "sh", "-c", "mkdir -p /tmp/empty && " + VERIFY_ALL, "sh", "/tmp/empty")
    assert rc == 0, err
    ok, total = (int(x) for x in out.split())
    assert ok == 0 and total > 100, (out, err)
