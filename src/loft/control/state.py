"""What every request of one control plane shares: the catalog's users and records, the
node, the metrics, the deadlines, who uses which workspace, and the terminal sessions."""

from __future__ import annotations

from dataclasses import dataclass, field

from loft.catalog import Catalog
from loft.control.accounts import Accounts
from loft.control.activity import Activity
from loft.control.metrics import Metrics
from loft.control.nodeclient import NodeClient
from loft.control.preview.site import PreviewSite
from loft.control.records import WorkspaceRecords
from loft.control.terminals import DEFAULT_GRACE, TerminalSessions

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
    activity: Activity = field(default_factory=Activity)
    #: the preview origin, when a proxy serves one
    preview: PreviewSite | None = None
    #: seconds a terminal waits for its client to come back
    terminal_grace: float = DEFAULT_GRACE
    accounts: Accounts = field(init=False)
    records: WorkspaceRecords = field(init=False)
    terminals: TerminalSessions = field(init=False)

    def __post_init__(self) -> None:
        self.accounts = Accounts(self.catalog)
        self.records = WorkspaceRecords(self.catalog)
        self.terminals = TerminalSessions(self.activity, self.metrics, self.terminal_grace)
