"""What a workspace's filesystem gets on its first start, so it works out of the box.

``/etc`` is the workspace's own (it persists and the user may change it): each entry the
environment has in its ``etc`` that the workspace lacks is linked there (``/etc/ssl``,
``/etc/alternatives``… follow the environment as it changes), except ``passwd`` and
``group``, which are copied so ``useradd`` can edit them (root, and ``runner`` with
uid/gid 1000, come from the environment's). Then ``/etc/hosts``, ``/etc/resolv.conf``
(with ``nat``: the stack's DNS forwarder), ``/home/runner`` owned by runner, ``/root``
(0700) and ``/var/tmp`` (1777). Nothing that exists is touched.

It runs *inside* the started container, as its root, with ``/usr/bin/sh`` from the
environment: every path is then resolved in the workspace's own view, so no link the
tenant left on its volume can point a write of the host's at a host file. It starts as
few programs as it can (one ``ln`` for every link, one ``cp``): each is a fork and exec
that a first start waits for.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["SEED_SCRIPT", "needs_seed"]

SEED_SCRIPT = r"""
set -e
umask 022
mkdir -p /etc /home
[ -e /root ] || [ -L /root ] || mkdir -m 0700 /root
[ -e /var/tmp ] || [ -L /var/tmp ] || mkdir -p -m 1777 /var/tmp
copies=""
set --
for entry in /usr/etc/* /usr/etc/.[!.]*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue
    name=${entry##*/}
    [ -e "/etc/$name" ] || [ -L "/etc/$name" ] && continue
    case $name in
        passwd|group) copies="$copies $entry" ;;
        *) set -- "$@" "$entry" ;;
    esac
done
[ -z "$copies" ] || cp $copies /etc/
[ $# -eq 0 ] || ln -s "$@" /etc/
if [ ! -e /etc/hosts ] && [ ! -L /etc/hosts ]; then
    read -r host < /proc/sys/kernel/hostname
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.1.1\t%s\n' \
        "$host" > /etc/hosts
fi
if [ -n "${LOFT_NAMESERVER:-}" ] && [ ! -e /etc/resolv.conf ] && [ ! -L /etc/resolv.conf ]; then
    echo "nameserver $LOFT_NAMESERVER" > /etc/resolv.conf
fi
[ -e /home/runner ] || [ -L /home/runner ] || install -d -o 1000 -g 1000 /home/runner
"""


def needs_seed(rootfs: Path, etc_entries: Iterable[str], nat: bool = False) -> bool:
    """Whether the filesystem mounted (host side) at ``rootfs`` lacks what the seed makes:
    one of the environment's ``etc_entries`` in ``/etc``, ``/etc/hosts``, ``/home/runner``
    (or, with ``nat``, ``/etc/resolv.conf``). A cheap check on every start (a few
    ``lstat``): the seed runs on the first, and after the environment gained an entry.
    The answer only decides whether the seed runs inside, so a tenant's link on the way
    misleads nothing else."""
    paths = [*(f"etc/{e}" for e in etc_entries), "etc/hosts", "home/runner"]
    paths += ["etc/resolv.conf"] if nat else []
    return not all(os.path.lexists(rootfs / p) for p in paths)
