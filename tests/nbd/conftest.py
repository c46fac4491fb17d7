import sys
from pathlib import Path

# The test PKI (a CA, server and client certificates) lives with the interop helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
