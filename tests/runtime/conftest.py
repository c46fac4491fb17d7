"""The runtime tests reuse the example environment and the escape probe of the envstore
tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "envstore"))
