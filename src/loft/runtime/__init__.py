"""The runtime (the "hypervisor"): attach a workspace's volume, run its sandbox or VM.

Modules are imported by name (``loft.runtime.attach``, ``loft.runtime.template``, ...):
this package imports nothing, so a program that needs one small helper
(``io_flusher``) does not load the others.

The volume's side: :mod:`~loft.runtime.rootfs_layout`, :mod:`~loft.runtime.template`,
:mod:`~loft.runtime.attach`, :mod:`~loft.runtime.freeze`, :mod:`~loft.runtime.io_flusher`.

The computer's side, behind one interface (:mod:`~loft.runtime.interface`), implemented
by the ``sandbox`` kind on runc (:mod:`~loft.runtime.sandbox`), one idea a module:
:mod:`~loft.runtime.spec` (typed inputs), :mod:`~loft.runtime.phase` (which command each
phase allows), :mod:`~loft.runtime.ids` (a workspace's host id range),
:mod:`~loft.runtime.oci` and :mod:`~loft.runtime.oci_seccomp` (the bundle's config, pure),
:mod:`~loft.runtime.layout` (directories, and the stage that hands runc an idmapped root),
:mod:`~loft.runtime.runc` (runc's command line, typed), :mod:`~loft.runtime.console`,
:mod:`~loft.runtime.forward`, :mod:`~loft.runtime.egress` (terminals, port forwarding,
outbound networking), :mod:`~loft.runtime.seed` (a first start's ``/etc``),
:mod:`~loft.runtime.cgroups`, :mod:`~loft.runtime.persist` (the state kept beside each
bundle), :mod:`~loft.runtime.errors`.
"""

__all__: list[str] = []
