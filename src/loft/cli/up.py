"""``loft up``: start loft on its embedded defaults (what ``make run`` runs)."""

from __future__ import annotations

import click

from loft.config import Settings
from loft.datadir import private_data_dir
from loft.errors import redact

_BANNER = """
loft is up.
  data dir     {data_dir}
  chunk store  {chunks}
  catalog      {catalog}
  NBD socket   {{socket}}

Try, in another shell:
  loft volume create demo --size 1G
  qemu-io -f raw -c 'write -P 0xab 0 1M' 'nbd+unix:///demo?socket={{socket}}'
  loft volume snapshot demo first        # goes through this service
  loft volume fork demo@first demo2
  nbdinfo --list 'nbd+unix:///?socket={{socket}}'
Ctrl-C stops (committing every volume first).
"""


@click.command()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def up(verbose: bool) -> None:
    """Start loft with its defaults: the disk service over a SQLite catalog and a chunk
    directory under $LOFT_DATA_DIR, in the foreground."""
    from loft.cli.disk_serve import run_disk_service

    s = Settings.from_env()
    private_data_dir(s.data_dir)
    banner = _BANNER.format(
        data_dir=s.data_dir, chunks=redact(s.chunks_url), catalog=redact(s.catalog_url)
    )
    run_disk_service(None, verbose=verbose, banner=banner)
