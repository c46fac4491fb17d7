import sys
from pathlib import Path

# Reuse the interop helpers (process runners for loft and the Debian NBD tools).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
