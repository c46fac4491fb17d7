"""What an environment (or any store path) is made of: packages, closure, sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from loft.envstore.pathinfo import InvalidPath
from loft.envstore.store import Store
from loft.envstore.store_path import name_part

__all__ = ["EnvInfo", "PathSummary", "env_info"]


@dataclass(frozen=True)
class PathSummary:
    """One referenced path: its name and sizes."""

    path: str
    name: str
    nar_size: int
    recipe: dict[str, object] | None


@dataclass
class EnvInfo:
    """Everything ``loft env info`` shows."""

    path: str
    name: str
    nar_hash: str
    nar_size: int
    closure_paths: int
    closure_nar_size: int
    references: list[PathSummary] = field(default_factory=list)
    recipe: dict[str, object] | None = None

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return asdict(self)


def env_info(store: Store, path: str) -> EnvInfo:
    """Summarise ``path``: its direct references (an env's packages) and its closure."""
    info = store.query(path)
    if info is None:
        raise InvalidPath(path)
    closure = store.closure([path])
    refs = []
    for r in info.references:
        if r == path:
            continue
        ri = store.query(r)
        assert ri is not None
        refs.append(PathSummary(r, name_part(r), ri.nar_size, ri.recipe))
    return EnvInfo(
        path=path,
        name=name_part(path),
        nar_hash=info.nar_hash,
        nar_size=info.nar_size,
        closure_paths=len(closure),
        closure_nar_size=store.nar_sizes(closure),
        references=sorted(refs, key=lambda s: s.name),
        recipe=info.recipe,
    )
