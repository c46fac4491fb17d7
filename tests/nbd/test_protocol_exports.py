"""The public surface of loft.nbd.protocol is exactly its __all__."""

from __future__ import annotations

import loft.nbd.protocol as protocol


def test_all_matches_public_names() -> None:
    public = {n for n in dir(protocol) if not n.startswith("_")}
    assert set(protocol.__all__) == public
    assert len(protocol.__all__) == len(set(protocol.__all__))
