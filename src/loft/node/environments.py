"""A workspace's environment: built on the node from a spec, kept as generations of the
workspace's own profile, seen by the runtime as a closure of store paths.

- **The spec** comes as Debian package names (``--packages python3,git``: a generated
  ``loft.toml``), as a ``loft.toml``'s text (locked here: resolved, fetched, built) or as
  a ``loft.lock``'s text (built exactly, nothing resolved: the reproducible way, and
  instant when the store has it). The node builds it, never the caller: a multi-user
  API in front of the node must not let users run builds of their own.
- **The profile** (named after the workspace's id, ``ws-<id>``) holds one generation per
  environment the workspace was given. Switching appends a generation and moves the
  pointer, rolling back moves it (``loft.envstore.profiles``); both take effect at the
  next start, since a running workspace has its ``/usr`` bound already. Every generation
  of every profile is a GC root (``loft env gc``), and so is every environment a
  workspace snapshot was taken with (``workspace_snapshots``).
- **Builds** run one at a time on a node (they compete for the same cores and downloads
  anyway), and the temporary GC roots a build leaves on this long-lived process are
  dropped once the profile holds the result, so an environment no generation refers to
  any more can be collected while the agent keeps running.
"""

from __future__ import annotations

import threading

from loft.envstore.build import build_lock, lock_spec
from loft.envstore.lock import loads
from loft.envstore.profiles import Generation, Profiles
from loft.envstore.spec import Spec, parse_spec
from loft.envstore.store import Store
from loft.errors import LoftError
from loft.runtime.errors import WorkspaceError
from loft.runtime.spec import EnvironmentView

__all__ = ["DEFAULT_PACKAGES", "Environments", "SpecInput", "spec_input"]

#: What a workspace gets when it asks for nothing: a shell (the Debian Essential set and
#: the CA certificates come with every environment).
DEFAULT_PACKAGES = ("bash",)


class SpecInput:
    """A spec as given: its text (TOML or lock JSON) and where it came from."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source

    @property
    def is_lock(self) -> bool:
        """A ``loft.lock`` (JSON) rather than a ``loft.toml``."""
        return self.text.lstrip().startswith("{")


def spec_input(packages: list[str], spec: str, source: str) -> SpecInput:
    """The spec a request gives: ``packages`` (Debian names) or ``spec`` text, not both;
    neither means :data:`DEFAULT_PACKAGES`."""
    if packages and spec:
        raise LoftError("give packages or a spec, not both")
    if spec:
        return SpecInput(spec, source or "the spec")
    names = [p.strip() for p in packages if p.strip()] or list(DEFAULT_PACKAGES)
    text = packages_spec(names)
    return SpecInput(text, f"--packages {','.join(names)}")


def packages_spec(debian: list[str]) -> str:
    """A ``loft.toml`` asking for these Debian packages (checked as a spec is)."""
    text = "[env]\ndebian = [" + ", ".join(f'"{n}"' for n in debian) + "]\n"
    bad = [n for n in debian if '"' in n or "\\" in n or not n.isprintable()]
    if bad:
        raise LoftError(f"bad package name {bad[0]!r}")
    parse_spec(text, source=f"--packages {','.join(debian)}")
    return text


class Environments:
    """Builds environments into the node's store and keeps workspace profiles."""

    def __init__(self, store: Store, profiles: Profiles) -> None:
        self.store = store
        self.profiles = profiles
        self._build = threading.Lock()

    def build(self, spec: SpecInput) -> str:
        """Lock and build (or, for a lock, build) ``spec``; its environment's store path.
        A spec that does not resolve or build is an error naming its source."""
        with self._build:
            if spec.is_lock:
                return build_lock(loads(spec.text, source=spec.source), self.store).path
            parsed: Spec = parse_spec(spec.text, source=spec.source)
            return lock_spec(parsed, self.store).env.path

    def settle(self) -> None:
        """Drop this process's temporary GC roots once profiles hold what it built
        (waits for a build under way)."""
        with self._build:
            self.store.clear_temp_roots()

    def view(self, env_path: str) -> EnvironmentView:
        """How the runtime sees ``env_path``: its closure in the store's directory."""
        if not self.store.is_valid(env_path):
            raise WorkspaceError(
                f"environment {env_path} is not in this node's store",
                hint="switch the workspace to an environment built here (loft env switch)",
            )
        closure = tuple(sorted(self.store.closure([env_path])))
        return EnvironmentView(self.store.real_store_dir, env_path, closure)

    def current(self, profile: str) -> Generation | None:
        """The profile's current generation."""
        return self.profiles.current(profile)

    def switch(self, profile: str, env_path: str) -> Generation:
        """A new generation of ``profile`` pointing at ``env_path``, made current."""
        return self.profiles.switch(profile, env_path)

    def rollback(self, profile: str, to: int | None) -> Generation:
        """The previous generation (or ``to``) made current."""
        return self.profiles.rollback(profile, to)

    def forget(self, profile: str) -> None:
        """Delete the profile and its generations."""
        self.profiles.delete(profile)
