"""The control plane: the HTTP API users and their tools talk to (users, tokens, quotas,
workspaces), in front of a node agent reached through :class:`NodeClient`.

Modules: ``app`` (the ASGI app), ``routes/`` (one per resource), ``accounts`` (users,
tokens), ``records`` (workspace records), ``quotas``, ``nodeclient`` (the seam to a
node) and ``fakenode`` (an in-memory node), ``errors``, ``metrics``, ``bodylimit``,
``server`` (``loft control serve``).
"""
