"""loft.envstore: a Nix-format store of content-addressed, immutable paths.

Pure format modules (``nixbase32``, ``store_path``, ``nar``, ``narinfo``, ``signing``)
do no I/O beyond what their arguments hand them; :mod:`loft.envstore.store` is the thin
layer that owns the physical directory, over its SQLite metadata
(:mod:`loft.envstore.store_db`).
"""

from __future__ import annotations

from loft.errors import LoftError


class EnvstoreError(LoftError):
    """A user-visible failure in the environment store (bad name, bad NAR, hash mismatch...)."""
