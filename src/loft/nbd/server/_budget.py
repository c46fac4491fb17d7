"""Bytes in flight: what bounds the memory the server holds for its clients.

A connection charges its :class:`Account` with the bytes it holds for its client: the
data of READs it accepted and has not answered, the payloads of WRITEs from the moment
their buffer is allocated until the write is done, and reply bytes queued in its
transport (a client that does not read its replies leaves them there). Every account
draws on one :class:`ServerBudget`, so a thousand clients cannot each take a
connection's maximum. Counting a request in flight -- not its bytes moving -- keeps the
hot path as it was: small requests served at once are never counted, and a request is
charged once when it arrives and released once when it is answered.

Rules, applied where a request arrives, never per byte:

- A large request (LARGE_REQUEST or more: a READ, or a WRITE whose payload is about to
  be allocated) is admitted only if it fits: the connection's charge plus its length
  within ``max_connection_bytes``, and the server's total plus its length within
  ``max_bytes``. A request that does not fit waits, and its connection reads nothing
  more until it does (the client's further requests stay in the socket, then in the
  client).
- So that one request larger than a budget is still served (a 32 MiB READ would
  otherwise wait forever), a connection with nothing charged passes its own budget, and
  the server's when nothing at all is charged.
- So that clients that read their replies keep working while others that do not hold
  the whole server budget, a connection may always hold up to GUARANTEED_BYTES: within
  that, the server's budget is not asked.
- A connection takes no more requests, small ones included, while its charge is at
  ``max_connection_bytes``, or while it holds GUARANTEED_BYTES or more and the server is
  at ``max_bytes``. Those waiting on the server are woken in arrival order as bytes are
  released.

So the server holds at most ``max_bytes`` plus, per connection, GUARANTEED_BYTES and one
request's worth of overshoot (a request that passed while its connection had room), plus
what is never charged: receive buffers, one small payload being received, and reply
bytes up to the transport's high-water mark.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_CONNECTION_BYTES",
    "GUARANTEED_BYTES",
    "LARGE_REQUEST",
    "Account",
    "ServerBudget",
]

#: Bytes of requests and replies in flight the whole server may hold. A well-behaved
#: client at full speed holds a few MiB (fio with 8 READs of 1 MiB in flight: 8 MiB at
#: most, usually less since replies leave as they are made), so this is reached only by
#: clients that stop reading, or by very many busy ones.
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
#: Bytes one connection may hold: two requests of the largest size NBD allows
#: (MAX_PAYLOAD, 32 MiB), so a client pipelining large requests is never throttled.
DEFAULT_MAX_CONNECTION_BYTES = 64 * 1024 * 1024
#: Requests at least this long are admitted against the budgets before they run;
#: smaller ones are served at once and counted only while they wait on a worker thread
#: (the per-request hot path stays as lean as it was).
LARGE_REQUEST = 128 * 1024
#: What each connection may hold whatever the other connections hold.
GUARANTEED_BYTES = 1024 * 1024


class ServerBudget:
    """The server-wide byte budget that every connection's :class:`Account` draws on.

    ``schedule(fn)`` runs ``fn`` soon, outside the caller (``loop.call_soon``): waking
    the connections that wait for room never runs inside another connection's code.
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_connection_bytes: int = DEFAULT_MAX_CONNECTION_BYTES,
        *,
        schedule: Callable[[Callable[[], None]], object],
    ) -> None:
        if max_bytes < 1 or max_connection_bytes < 1:
            raise ValueError("byte budgets must be positive")
        self.max_bytes = max_bytes
        self.max_connection_bytes = max_connection_bytes
        #: bytes charged by all accounts
        self.in_flight = 0
        self._schedule = schedule
        #: accounts waiting for the server to have room, in arrival order
        self._starved: dict[Account, None] = {}
        self._wake_pending = False

    def account(self, wake: Callable[[], None]) -> Account:
        """A new connection's account; ``wake()`` is called when it may go on."""
        return Account(self, wake)

    @property
    def waiting(self) -> int:
        """How many connections wait for the server to have room."""
        return len(self._starved)

    def _starve(self, account: Account) -> None:
        self._starved[account] = None

    def _released(self) -> None:
        if self._starved and not self._wake_pending and self.in_flight < self.max_bytes:
            self._wake_pending = True
            self._schedule(self._wake)

    def _wake(self) -> None:
        """Let waiting connections go on, first come first served, while there is room
        (each one that still does not fit queues itself again, at the end)."""
        self._wake_pending = False
        for account in list(self._starved):
            if self.in_flight >= self.max_bytes:
                break
            self._starved.pop(account, None)
            account.wake()


class Account:
    """One connection's bytes in flight (see the module docstring for the rules)."""

    __slots__ = ("_budget", "charge", "wake")

    def __init__(self, budget: ServerBudget, wake: Callable[[], None]) -> None:
        self._budget = budget
        self.wake = wake
        #: bytes this connection holds now
        self.charge = 0

    def add(self, n: int) -> None:
        """Charge ``n`` bytes unconditionally (already allocated, or small)."""
        self.charge += n
        self._budget.in_flight += n

    def release(self, n: int) -> None:
        """Give back ``n`` charged bytes."""
        self.charge -= n
        budget = self._budget
        budget.in_flight -= n
        budget._released()

    def admit(self, cost: int) -> bool:
        """Charge ``cost`` bytes for a large request about to run (or a payload about to
        be received) if it fits; False: it must wait (and this connection is woken when
        the server has room again, if that is what it waits for)."""
        budget = self._budget
        charge = self.charge
        if charge and charge + cost > budget.max_connection_bytes:
            return False  # its own replies must drain first: woken by the connection
        if (
            budget.in_flight
            and budget.in_flight + cost > budget.max_bytes
            and charge + cost > GUARANTEED_BYTES
        ):
            budget._starve(self)
            return False
        self.add(cost)
        return True

    def blocked(self) -> bool:
        """True while the connection must take no more requests at all."""
        budget = self._budget
        charge = self.charge
        if charge >= budget.max_connection_bytes:
            return True
        if charge >= GUARANTEED_BYTES and budget.in_flight >= budget.max_bytes:
            budget._starve(self)
            return True
        return False

    def close(self) -> None:
        """The connection is gone: it waits for nothing any more."""
        self._budget._starved.pop(self, None)
