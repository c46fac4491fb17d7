"""Token buckets by key, sans I/O (the caller passes the time): how often something
may happen per workspace, per client."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Buckets"]


@dataclass
class Buckets:
    """A bucket of ``burst`` tokens per key, refilled at ``rate`` tokens a second. Keys
    whose bucket is full again are forgotten, so memory follows the active keys."""

    burst: float
    rate: float
    _tokens: dict[str, tuple[float, float]] = field(default_factory=dict)

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._tokens.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` has a token (0: it has one now)."""
        missing = 1.0 - self._level(key, now)
        return max(0.0, missing / self.rate)

    def take(self, key: str, now: float) -> None:
        """Spend one of ``key``'s tokens (the caller checked :meth:`wait` first)."""
        self._tokens[key] = (self._level(key, now) - 1.0, now)
        if len(self._tokens) > 1024:
            self._tokens = {
                k: (t, at)
                for k, (t, at) in self._tokens.items()
                if self._level(k, now) < self.burst
            }
