"""What every request of one control plane shares: the catalog's users and records, the
node, the metrics, and the deadlines."""

from __future__ import annotations

from dataclasses import dataclass, field

from loft.catalog import Catalog
from loft.control.accounts import Accounts
from loft.control.metrics import Metrics
from loft.control.nodeclient import NodeClient
from loft.control.records import WorkspaceRecords

__all__ = ["DEFAULT_BUILD_TIMEOUT", "DEFAULT_NODE_TIMEOUT", "ControlState"]

#: Seconds a node has to answer one call (a create or fork builds an environment on a
#: warm cache in well under this; a node that takes longer is answered 503).
DEFAULT_NODE_TIMEOUT = 30.0
#: Seconds a node has for a call that may build an environment first (create, fork,
#: environment switch): a cold build downloads and unpacks packages.
DEFAULT_BUILD_TIMEOUT = 1800.0


@dataclass
class ControlState:
    """The shared state of one control plane (one per app)."""

    catalog: Catalog
    node: NodeClient
    node_timeout: float = DEFAULT_NODE_TIMEOUT
    build_timeout: float = DEFAULT_BUILD_TIMEOUT
    metrics: Metrics = field(default_factory=Metrics)
    accounts: Accounts = field(init=False)
    records: WorkspaceRecords = field(init=False)

    def __post_init__(self) -> None:
        self.accounts = Accounts(self.catalog)
        self.records = WorkspaceRecords(self.catalog)
