import sys
from pathlib import Path

# Reuse the interop helpers (process runners for loft and the Debian NBD tools) and the
# NBD test client.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nbd"))
# The example environment (built once per session) and the runtime's helpers, for the
# workspace tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "envstore"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
