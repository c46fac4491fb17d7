"""Child process of test_volume_crash.py: write and flush a volume in a loop until killed.

    python crash_writer.py NAME LOG SEED

Settings come from the LOFT_* environment. The log gets one line per event, written (to the
page cache, which survives SIGKILL) at the moment it happens:

    R                      the volume is open; the loop starts
    W <offset> <length> <seed>   a write is about to be issued (its bytes: pattern(seed, length))
    F <n> <sha256>         flush n returned; sha256 of the whole volume as the writer knows it

so the checker can replay exactly what was acknowledged and what was in flight.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys

from loft.blockstore import Blockstore

LEASE_TTL = 2.5
LEASE_MARGIN = 0.4


def pattern(seed: int, length: int) -> bytes:
    """The bytes of a logged write (shared with the checker)."""
    return random.Random(seed).randbytes(length)


def main() -> None:
    name, log_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    bs = Blockstore.from_settings()
    vol = bs.open(name, lease_ttl=LEASE_TTL, lease_margin=LEASE_MARGIN)
    size, es = vol.size, vol.extent_size
    state = bytearray(vol.read(0, size))
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def log(line: str) -> None:
        os.write(fd, line.encode() + b"\n")

    log("R")
    n = 0
    while True:
        for _ in range(rng.randint(1, 4)):
            # Mostly inside a few hot extents, so later writes land in already-dirty ones.
            offset = rng.randrange(0, 3 * es) if rng.random() < 0.7 else rng.randrange(0, size)
            length = min(rng.choice([1, 512, 4096, 5000, es // 2, es, es + 4096]), size - offset)
            wseed = rng.getrandbits(32)
            data = pattern(wseed, length)
            log(f"W {offset} {length} {wseed}")
            vol.write(offset, data)
            state[offset : offset + length] = data
        vol.flush()
        log(f"F {n} {hashlib.sha256(state).hexdigest()}")
        n += 1


if __name__ == "__main__":
    main()
