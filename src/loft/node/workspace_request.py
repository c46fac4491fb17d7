"""What a request for a new workspace asks for, checked before any flow starts: sizes,
limits and network, each refused with :class:`BadRequest` and a hint."""

from __future__ import annotations

from dataclasses import dataclass

from loft.blockstore.api import DEFAULT_EXTENT_SIZE
from loft.blockstore.names import check_geometry
from loft.errors import LoftError
from loft.node.environments import SpecInput
from loft.node.records import check_workspace_name
from loft.runtime.spec import MIN_MEMORY, Limits, Network
from loft.units import format_size

__all__ = ["MAX_CPUS", "MIN_CPUS", "MIN_SIZE", "BadRequest", "NewWorkspace"]

#: The smallest workspace volume: ext4 with its journal and the workspace layout, and
#: room to work in.
MIN_SIZE = 64 << 20
#: CPU limits a workspace may ask for (what the runtime's Limits accept).
MIN_CPUS, MAX_CPUS = 0.01, 1024


class BadRequest(LoftError):
    """A request's values do not make a workspace (sizes, limits, network)."""


@dataclass(frozen=True)
class NewWorkspace:
    """What ``loft new`` asks for, checked."""

    name: str
    spec: SpecInput
    size: int
    limits: Limits
    network: Network
    start: bool = True

    @classmethod
    def checked(
        cls,
        name: str,
        spec: SpecInput,
        size: int,
        memory: int,
        cpus: float,
        pids: int,
        network: str,
        start: bool = True,
    ) -> NewWorkspace:
        """The request's values, or BadRequest naming the first bad one."""
        check_workspace_name(name)
        if size < MIN_SIZE:
            raise BadRequest(
                f"size {format_size(size)} is below {format_size(MIN_SIZE)}",
                hint="ask for --size 1G or more",
            )
        if memory < MIN_MEMORY:
            raise BadRequest(
                f"memory {format_size(memory)} is below {format_size(MIN_MEMORY)}",
                hint="ask for --memory 256M or more",
            )
        if not MIN_CPUS <= cpus <= MAX_CPUS:
            raise BadRequest(
                f"cpus {cpus:g} is not between {MIN_CPUS} and {MAX_CPUS}",
                hint="a fraction of a CPU is fine: --cpus 0.5",
            )
        try:
            check_geometry(size, DEFAULT_EXTENT_SIZE)
            limits = Limits(memory=memory, cpus=cpus, pids=pids)
            net = Network(network)
        except ValueError as e:
            raise BadRequest(str(e), hint="see `loft new --help` for the limits") from None
        except LoftError as e:
            raise BadRequest(e.message, hint=e.hint) from None
        return cls(name, spec, size, limits, net, start)
