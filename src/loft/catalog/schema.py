"""The catalog's tables (SQLAlchemy Core). Migrations in ``migrations/`` create them.

Times are float seconds since the epoch *by the database's clock* (see
:func:`loft.catalog.Catalog.now`), so leases never depend on a node's clock.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

metadata = MetaData()

#: Deployment-wide settings, e.g. the secret that keys chunk hashes.
settings = Table(
    "settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

#: One row per volume. The head (root, version, epoch, holder, lease_expires) lives in this
#: row so that every commit is one compare-and-swap and a takeover bumps the epoch in the
#: same row it reads.
volumes = Table(
    "volumes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uid", String(32), nullable=False, unique=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("extent_size", Integer, nullable=False),
    Column("durability", String(16), nullable=False),
    Column("commit_interval", Float, nullable=False),
    # Bytes of uncommitted writes past which writers wait for a commit (bounds the data
    # a `local` volume can lose with its node).
    Column("max_dirty", BigInteger, nullable=False, server_default=str(1 << 30)),
    Column("parent_uid", String(32), nullable=True),
    Column("parent_snapshot", String(255), nullable=True),
    # JSON list of ancestor volume uids, nearest first: allocation depth 2, 3, ...
    Column("lineage", Text, nullable=False, server_default="[]"),
    Column("created_at", Float, nullable=False),
    Column("root", String(64), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("holder", String(255), nullable=True),
    Column("lease_expires", Float, nullable=True),
    # The control socket of the disk service serving this volume, while it is served.
    Column("control_socket", Text, nullable=True),
    # Written raw (an import, an NBD write outside a workspace attachment): the host
    # never mounts it. Sticky, and inherited by forks.
    Column("raw_written", Boolean, nullable=False, server_default=false()),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("volume_id", Integer, ForeignKey("volumes.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("root", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("auto", Boolean, nullable=False, server_default="0"),
    UniqueConstraint("volume_id", "name", name="uq_snapshot_name"),
)

#: Commits in flight register the chunk keys they will reference before uploading, so GC
#: never sweeps a chunk a commit is about to point at.
commits_inflight = Table(
    "commits_inflight",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("volume_id", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
)

inflight_chunks = Table(
    "inflight_chunks",
    metadata,
    Column(
        "commit_id",
        Integer,
        ForeignKey("commits_inflight.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("key", String(255), nullable=False),
    PrimaryKeyConstraint("commit_id", "key"),
)

#: A single row; GC's sweep sets ``sweeping_until`` (a lease by the database clock) and
#: commits that register chunks while it is set wait before trusting a dedup hit.
#: ``sweeps`` counts the sweeps ever started: a node's presence index trusts only what it
#: recorded at the count a commit's registration reads.
gc_state = Table(
    "gc_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sweeping_until", Float, nullable=True),
    Column("holder", String(255), nullable=True),
    Column("sweeps", BigInteger, nullable=False, server_default="0"),
)

#: Environment profiles: the current generation of each profile.
env_profiles = Table(
    "env_profiles",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("generation", Integer, nullable=False),
)

env_generations = Table(
    "env_generations",
    metadata,
    Column("profile", String(255), nullable=False),
    Column("number", Integer, nullable=False),
    Column("env_path", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("profile", "number"),
)

#: Workspaces: the record of each (what it is: its owner's user name and its name,
#: environment spec, limits, size, network, host id range, runtime kind, volume). The
#: control plane writes these rows; a node only reads them.
workspaces = Table(
    "workspaces",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("name", String(40), nullable=False),
    # The environment spec as given: a loft.toml's text (generated for --packages) or a
    # loft.lock's JSON; spec_source says where it came from, for messages.
    Column("spec", Text, nullable=False),
    Column("spec_source", String(255), nullable=False),
    Column("memory", BigInteger, nullable=False),
    Column("cpus", Float, nullable=False),
    Column("pids", Integer, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("network", String(8), nullable=False),
    # The first of the workspace's 65,536 host ids: unique, so two nodes allocating at
    # once can never both hand out one range (the second insert fails and retries).
    Column("ids_base", BigInteger, nullable=False, unique=True),
    Column("runtime", String(16), nullable=False),
    Column("volume", String(255), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    # The control plane's (revision 0006): seconds without use before the idle reaper
    # stops it (0: never), and free-form labels (a JSON object of strings).
    Column("idle_timeout", Float, nullable=False, server_default="900"),
    Column("metadata", Text, nullable=False, server_default="{}"),
    # The control plane's (revision 0007): anyone may open its previews (the owner said so).
    Column("preview_public", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("owner", "name", name="uq_workspace_owner_name"),
)

#: A workspace's runtime state, written only by the node that runs it: where (node),
#: what it is doing (phase), what it should be doing (desired: running or stopped, so a
#: node that stopped it, or restarts, knows to start it again) and its attachment.
workspace_runtime = Table(
    "workspace_runtime",
    metadata,
    Column(
        "workspace_id",
        String(16),
        ForeignKey("workspaces.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("node", String(64), nullable=True),
    Column("phase", String(16), nullable=False),
    Column("desired", String(16), nullable=False),
    # JSON: the volume, loop device, nbdfuse pid and disk service holder while attached.
    Column("attachment", Text, nullable=True),
    Column("updated_at", Float, nullable=False),
)

#: The environment each workspace snapshot was taken with: a restore brings it back, a
#: fork starts from it, and `loft env gc` keeps it (a GC root) while the snapshot lives.
workspace_snapshots = Table(
    "workspace_snapshots",
    metadata,
    Column(
        "workspace_id",
        String(16),
        ForeignKey("workspaces.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("name", String(255), nullable=False),
    Column("env_path", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    # revision 0008: a VM snapshot's memory image record (loft.runtime.vm_image), if any
    Column("memory", LargeBinary, nullable=True),
    PrimaryKeyConstraint("workspace_id", "name"),
)

# --- the control plane's rows (users, their tokens and quotas) ---------------------------

#: People and programs that call the control plane's API.
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(32), nullable=False, unique=True),
    Column("admin", Boolean, nullable=False, server_default=false()),
    Column("created_at", Float, nullable=False),
)

#: A user's limits on what their workspaces add up to (no row: the defaults).
quotas = Table(
    "quotas",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("workspaces", Integer, nullable=False),
    Column("memory", BigInteger, nullable=False),
    Column("cpus", Float, nullable=False),
    Column("disk", BigInteger, nullable=False),
)

#: Bearer tokens: the public id is in the token; only a keyed hash of its secret is kept.
tokens = Table(
    "tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column(
        "user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    Column("name", String(64), nullable=False, server_default=""),
    Column("digest", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float, nullable=True),
)
