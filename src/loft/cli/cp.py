"""``loft cp``: copy a file into or out of a workspace, through the files API."""

from __future__ import annotations

import sys

import click

from loft.api import MAX_FILE_BYTES
from loft.cli.apiclient import api
from loft.errors import LoftError


class CopyError(LoftError):
    """A copy that cannot be done as asked."""


def _remote(arg: str) -> tuple[str, str] | None:
    """``NAME:PATH`` as (name, path); None for a local path (``./a:b`` stays local)."""
    name, sep, path = arg.partition(":")
    if not sep or "/" in name or not name:
        return None
    return name, path


@click.command()
@click.argument("source")
@click.argument("dest")
def cp(source: str, dest: str) -> None:
    """Copy SOURCE to DEST, one of them NAME:PATH in a workspace (PATH absolute), the
    other a local file ('-' for stdin or stdout). Files up to 16 MiB."""
    src, dst = _remote(source), _remote(dest)
    if (src is None) == (dst is None):
        raise CopyError(
            "one of SOURCE and DEST must be NAME:PATH, the other local",
            hint="loft cp ./notes.txt dev:/root/notes.txt",
        )
    client = api()
    if dst is not None:
        if source == "-":
            data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        else:
            with open(source, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise CopyError(f"{source} is over the 16 MiB the files API takes")
        client.write_file(dst[0], dst[1], data)
    else:
        assert src is not None
        data = client.read_file(src[0], src[1])
        if dest == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            with open(dest, "wb") as f:
                f.write(data)
