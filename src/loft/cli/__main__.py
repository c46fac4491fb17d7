"""``python -m loft.cli``: the ``loft`` command (how ``loft up`` starts its children)."""

from loft.cli import run

run()
