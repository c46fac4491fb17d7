"""What the store already made, and from what: the recipes the builder records on the
paths it adds (which unpacker made a tree from which file, which layers and environment
from which inputs), read back so a build never redoes work the store holds."""

from __future__ import annotations

from dataclasses import dataclass

from loft.envstore import nixbase32
from loft.envstore.lock import LockedArtefact, LockedPath
from loft.envstore.pathinfo import PathInfo
from loft.envstore.pin import Pin
from loft.envstore.store import Store
from loft.envstore.store_path import fixed_output_path, name_part

__all__ = ["ENV", "ENV_NAME", "LAYER", "UNPACKER", "Realisations", "locked"]

#: The builders a recipe names (their versions change when what they make changes).
UNPACKER = "loft-unpack/1"
LAYER = "loft-layer/3"  # 3: CA hash links
ENV = "loft-env/2"
#: The name of every environment's store path.
ENV_NAME = "loft-env"


@dataclass
class Realisations:
    """What the store already made from which artefact (from the recipes it records)."""

    by_hash: dict[str, tuple[str, str]]  # registry hash -> (fixed-output path, its sha256)
    by_source: dict[str, list[PathInfo]]  # fixed-output path -> trees unpacked from it

    by_inputs: dict[str, list[PathInfo]]  # compose key -> layers and environments
    store: Store

    @classmethod
    def scan(cls, store: Store) -> Realisations:
        by_hash: dict[str, tuple[str, str]] = {}
        by_source: dict[str, list[PathInfo]] = {}
        by_inputs: dict[str, list[PathInfo]] = {}
        for p in store.all_paths():
            info = store.query(p)
            r = info.recipe if info is not None else None
            if info is None or not r:
                continue
            if isinstance(r.get("hash"), str) and info.ca and info.ca.startswith("fixed:sha256:"):
                sha = nixbase32.decode(info.ca.rsplit(":", 1)[1]).hex()
                by_hash[str(r["hash"])] = (p, sha)
            if r.get("builder") == UNPACKER and isinstance(r.get("from"), str):
                by_source.setdefault(str(r["from"]), []).append(info)
            if r.get("builder") in (LAYER, ENV) and isinstance(r.get("inputs"), str):
                by_inputs.setdefault(str(r["inputs"]), []).append(info)
        return cls(by_hash, by_source, by_inputs, store)

    def composed(self, key: str) -> tuple[list[LockedPath], LockedPath] | None:
        """Layers and environment already composed from the inputs ``key``, if any."""
        made = self.by_inputs.get(key, [])
        envs = [i for i in made if i.recipe and i.recipe.get("builder") == ENV]
        if len(envs) != 1:
            return None
        layers = sorted(
            (i for i in made if i.recipe and i.recipe.get("builder") == LAYER),
            key=lambda i: int(str(i.recipe["order"])) if i.recipe else 0,
        )
        if not set(envs[0].references) >= {i.path for i in layers}:
            return None
        return [locked(i, name_part(i.path)) for i in layers], locked(envs[0], ENV_NAME)

    def find(self, pin: Pin, recipe: dict[str, object]) -> LockedArtefact | None:
        """The artefact as already realised, if the same unpacker made it from the same file."""
        fixed, sha = self.by_hash.get(pin.registry_hash, ("", ""))
        if not fixed or fixed != fixed_output_path(sha, pin.file_name):
            return None
        for info in self.by_source.get(fixed, []):
            want = {**recipe, "from": fixed}
            if info.recipe == want and name_part(info.path) == pin.out_name:
                return LockedArtefact(
                    kind=pin.kind, name=pin.name, version=pin.version, url=pin.url,
                    registry_hash=pin.registry_hash, file_sha256=sha,
                    file_name=pin.file_name, fixed_path=fixed,
                    output=locked(info, pin.out_name), location=pin.location, bin=dict(pin.bin),
                    size=self.store.physical(fixed).stat().st_size,
                )  # fmt: skip
        return None


def locked(info: PathInfo, name: str) -> LockedPath:
    """The lock's record of a store path the builder made."""
    return LockedPath(path=info.path, nar_hash=info.nar_hash, nar_size=info.nar_size, name=name)
