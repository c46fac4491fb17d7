"""PyPI resolution: pip's own resolver, binary wheels only, for Debian's python.

``pip install --dry-run --report`` resolves the requirements for the interpreter the
environment gets (Debian's python3: its version, ABI and glibc platform), never for the
venv loft runs in, and reports each wheel's URL and sha256 without installing anything.
pip runs ``--isolated`` against the public index so the host's pip configuration (extra
indexes, local wheel directories) cannot leak machine-local URLs into a lock.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loft.envstore import EnvstoreError
from loft.envstore.bounded import read_file_bounded

__all__ = [
    "DEFAULT_INDEX",
    "MAX_PIP_REPORT_SIZE",
    "PyPIArtefact",
    "PyPIResolveError",
    "PythonTarget",
    "resolve_pypi",
]

#: Override with LOFT_PYPI_INDEX (a PEP 503 simple index).
DEFAULT_INDEX = "https://pypi.org/simple"
#: Largest pip report read. pip fetches the index pages and metadata itself; its report
#: repeats each wheel's metadata (a long README is ~100 KB), so a few hundred packages
#: stay under ~30 MB. An index serving huge metadata must not make loft hold it all.
MAX_PIP_REPORT_SIZE = 64 << 20


class PyPIResolveError(EnvstoreError):
    """pip could not resolve the requested PyPI requirements to binary wheels."""


@dataclass(frozen=True)
class PythonTarget:
    """The interpreter wheels are chosen for: version, ABI, platform tag."""

    version: str  # "3.11"
    platform: str  # "manylinux_2_36_x86_64"

    @property
    def abi(self) -> str:
        """The CPython ABI tag, e.g. ``cp311``."""
        return "cp" + self.version.replace(".", "")

    def platforms(self) -> list[str]:
        """Every platform tag the interpreter accepts, newest first (PEP 600 + legacy).

        pip's ``--platform`` does not expand ``manylinux_2_36`` to the older glibc tags
        by itself, and most wheels are tagged ``manylinux_2_17``/``manylinux2014``.
        """
        _, major, minor, arch = self.platform.split("_", 3)
        tags = [f"manylinux_{major}_{m}_{arch}" for m in range(int(minor), 4, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        for m, name in legacy.items():
            if m <= int(minor):
                tags.append(f"{name}_{arch}")
        return tags

    @classmethod
    def debian(cls, python: str = "/usr/bin/python3") -> PythonTarget:
        """Ask Debian's interpreter for its version and glibc platform."""
        code = (
            "import os,platform,sys;"
            "print('%d.%d' % sys.version_info[:2]);"
            "print(os.confstr('CS_GNU_LIBC_VERSION').split()[1]);"
            "print(platform.machine())"
        )
        r = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True)
        if r.returncode != 0:
            raise PyPIResolveError(f"cannot query {python}", hint=r.stderr.strip()[-200:])
        version, glibc, machine = r.stdout.split()
        major, minor = glibc.split(".")[:2]
        return cls(version=version, platform=f"manylinux_{major}_{minor}_{machine}")


@dataclass(frozen=True)
class PyPIArtefact:
    """One wheel of a resolved set, pinned by PyPI's sha256."""

    name: str
    version: str
    url: str
    filename: str
    sha256: str


def resolve_pypi(requirements: list[str], target: PythonTarget) -> list[PyPIArtefact]:
    """Resolve ``requirements`` with pip to the full set of wheels, sorted by name."""
    if not requirements:
        return []
    index = os.environ.get("LOFT_PYPI_INDEX") or DEFAULT_INDEX
    with tempfile.TemporaryDirectory(prefix="loft-pip-") as tmp:
        report = Path(tmp) / "report.json"
        argv = [
            sys.executable, "-m", "pip", "install", "--isolated", "--dry-run",
            "--ignore-installed", "--quiet", "--disable-pip-version-check",
            "--index-url", index, "--report", str(report), "--only-binary=:all:",
            "--python-version", target.version, "--implementation", "cp",
            "--abi", target.abi, *(f"--platform={p}" for p in target.platforms()),
            "--target", str(Path(tmp) / "target"), "--", *requirements,
        ]  # fmt: skip
        r = subprocess.run(argv, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise PyPIResolveError(_pip_error(r.stderr, requirements), hint="check [env] pypi")
        data = json.loads(read_file_bounded(report, MAX_PIP_REPORT_SIZE, "pip's report"))
    out = []
    for item in data["install"]:
        info = item["download_info"]
        sha = info.get("archive_info", {}).get("hashes", {}).get("sha256")
        url = info["url"]
        if not sha or not url.endswith(".whl"):
            raise PyPIResolveError(f"{item['metadata']['name']}: pip offered no pinned wheel")
        out.append(
            PyPIArtefact(
                name=_normalise(item["metadata"]["name"]),
                version=item["metadata"]["version"],
                url=url,
                filename=url.rsplit("/", 1)[1],
                sha256=sha,
            )
        )
    return sorted(out, key=lambda a: a.name)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip_error(stderr: str, requirements: list[str]) -> str:
    """Boil pip's output down to one line that names the culprit."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.startswith("ERROR:")]
    for ln in lines:
        m = re.search(r"No matching distribution found for (\S+)", ln)
        if m:
            return f"no binary wheel on PyPI matches {m.group(1)!r}"
    if lines:
        return lines[-1].removeprefix("ERROR:").strip()[:300]
    tail = stderr.strip().splitlines()
    return f"pip failed to resolve {requirements}: {tail[-1] if tail else 'no output'}"
