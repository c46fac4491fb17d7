import sys
from pathlib import Path

# The NBD test client (loft's protocol over a blocking socket) lives with the NBD tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nbd"))
