"""The sandbox runtime's errors::

LoftError
 +-- WorkspaceError            (loft.runtime.errors)
      +-- UnknownWorkspace      no such workspace runs here
      +-- PhaseError            the command is not allowed in the workspace's phase
      +-- RuncError             runc refused or failed (its message quoted)
      +-- NotSupported          asked for something this runtime cannot do
      +-- ImageInUse            a VM memory image a VM or another image still maps
"""

from __future__ import annotations

from loft.errors import LoftError

__all__ = [
    "ImageInUse",
    "NotSupported",
    "PhaseError",
    "RuncError",
    "UnknownWorkspace",
    "WorkspaceError",
]


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


class ImageInUse(WorkspaceError):
    """A VM memory image is not removed while a VM or another image maps its RAM."""
