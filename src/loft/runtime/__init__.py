"""loft.runtime: a workspace's computer — start, stop, exec, pty, freeze, thaw, stats.

One interface (:class:`~loft.runtime.interface.Runtime`) with one implementation so far,
the ``sandbox`` kind (:mod:`loft.runtime.sandbox`): a container on runc, the OCI runtime,
with a ``config.json`` loft generates (:mod:`loft.runtime.oci`) — not hand-written
namespace and cgroup code. The modules, one idea each:

- :mod:`~loft.runtime.spec`: what a workspace is made of (typed, validated inputs);
- :mod:`~loft.runtime.phase`: the phases and which command each allows;
- :mod:`~loft.runtime.ids`: picking a workspace's own 65,536-id host range;
- :mod:`~loft.runtime.oci`, :mod:`~loft.runtime.oci_seccomp`: the bundle's config, pure;
- :mod:`~loft.runtime.layout`: the directories under the data dir, and the stage that
  hands runc an idmapped root filesystem;
- :mod:`~loft.runtime.runc`: the runc command line, typed;
- :mod:`~loft.runtime.console`, :mod:`~loft.runtime.forward`, :mod:`~loft.runtime.egress`,
  :mod:`~loft.runtime.fsfreeze`: terminals, port forwarding, outbound networking and its
  policy, filesystem freezing;
- :mod:`~loft.runtime.seed`, :mod:`~loft.runtime.cgroups`: a first start's ``/etc``, and
  where runc put a workspace's cgroup;
- :mod:`~loft.runtime.persist`: the plain, versioned state kept beside each bundle.

Errors::

    LoftError
     +-- WorkspaceError            (loft.runtime)
          +-- UnknownWorkspace      no such workspace runs here
          +-- PhaseError            the command is not allowed in the workspace's phase
          +-- RuncError             runc refused or failed (its message quoted)
          +-- NotSupported          asked for something this runtime cannot do yet
"""

from __future__ import annotations

from loft.errors import LoftError


class WorkspaceError(LoftError):
    """A workspace could not be started, reached or changed as asked."""


class UnknownWorkspace(WorkspaceError):
    """No workspace of that id runs on this node."""


class PhaseError(WorkspaceError):
    """The command is not allowed in the workspace's current phase."""


class RuncError(WorkspaceError):
    """runc refused or failed; the message quotes runc's own."""


class NotSupported(WorkspaceError):
    """The runtime cannot do this (yet)."""
