"""The runtime (the "hypervisor"): attach a workspace's volume, run its sandbox or VM.

Modules are imported by name (``loft.runtime.attach``, ``loft.runtime.template``, ...):
this package imports nothing, so a program that needs one small helper
(``io_flusher``) does not load the others.
"""

__all__: list[str] = []
