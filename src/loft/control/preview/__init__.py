"""The preview origin: a workspace's ports served at ``http://PORT--ID.DOMAIN:PROXYPORT/``
by a proxy on its own listener, never the API's (so a tenant's pages never share an
origin with the API, nor see its credentials).

- :mod:`~loft.control.preview.host`: preview host names, parsed and made (pure);
- :mod:`~loft.control.preview.grants`: signed, expiring login tickets and cookies (pure);
- :mod:`~loft.control.preview.headers`: what is stripped from and added to forwarded
  messages (pure);
- :mod:`~loft.control.preview.pages`: the proxy's own answers, as small HTML pages;
- :mod:`~loft.control.preview.relay`: one HTTP exchange or WebSocket relayed (I/O);
- :mod:`~loft.control.preview.proxy`: the server: authorize, wake, relay.
"""
