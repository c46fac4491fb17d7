"""``PR_SET_IO_FLUSHER`` for the processes on a workspace's write path.

A workspace's writes go ext4 -> loop device -> FUSE (nbdfuse) -> NBD -> disk service ->
working copy on the data disk. When memory runs short, the kernel reclaims by writing
dirty pages back -- through that same chain. If nbdfuse or the disk service then needs
memory to make progress and the allocation itself waits on writeback, the chain waits
on itself: a deadlock. ``PR_SET_IO_FLUSHER`` (prctl 57, Linux 5.6) marks a process as
part of the I/O path: its allocations never recurse into filesystem or block I/O
(PF_MEMALLOC_NOIO) and it is not throttled for the dirty pages of others
(PF_LOCAL_THROTTLE). It needs CAP_SYS_RESOURCE.

The flag is per task (thread) and is inherited by threads and children and kept across
``execve``. So:

- the disk service calls :func:`set_io_flusher` first thing, before it starts a thread;
- nbdfuse is not ours to change, and prctl acts on the calling task only: it is started
  through this file run as a program, ``python -I -S io_flusher.py nbdfuse ARGS...``,
  which sets the flag and ``exec``s nbdfuse (a ``preexec_fn`` would do the same between
  fork and exec, but is unsafe in a process with threads, which the node agent is).

Without CAP_SYS_RESOURCE (a host that drops it from root, as some container hosts do)
the kernel refuses: the process then runs anyway, without the flag, and says so (the
disk service in its log, the wrapper on nbdfuse's stderr); an attachment reports it
(``Attachment.io_flusher``). Refusing to run would take every workspace down on such a
host for a deadlock that needs memory pressure to happen.

This module imports nothing of loft's: run as a program, it starts in milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["PR_SET_IO_FLUSHER", "command", "main", "set_io_flusher"]

PR_SET_IO_FLUSHER = 57


def set_io_flusher() -> None:
    """Mark the calling thread (and the threads and children it starts from now on) as
    an I/O flusher. OSError when the kernel refuses (no CAP_SYS_RESOURCE, Linux < 5.6)."""
    # Not loft.libc: this file also runs as a script of its own (command()), without loft.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_IO_FLUSHER): {os.strerror(err)}")


def command(argv: list[str]) -> list[str]:
    """The command line that runs ``argv`` as an I/O flusher."""
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), *argv]


def main(argv: list[str]) -> None:
    """Set the flag (or say why not, on stderr), then become ``argv`` (exit 127 when
    it cannot run)."""
    if not argv:
        sys.exit("usage: io_flusher.py PROGRAM [ARGS...]")
    try:
        set_io_flusher()
    except OSError as e:
        print(f"io_flusher: {argv[0]} runs without the flag: {e}", file=sys.stderr, flush=True)
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        print(f"io_flusher: {argv[0]}: {e}", file=sys.stderr, flush=True)
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
