"""``python -m loft.cli``: the ``loft`` command (how ``loft up`` starts its children)."""

from loft.cli import run

if __name__ == "__main__":  # not when imported (the suite's exports check imports it)
    run()
