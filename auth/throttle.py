"""Throttling of failed logins, per user name and per client address, in memory.

Used from the hub's event loop only (one thread), so it needs no lock. A sliding window: a key is
blocked while it has `limit` failures younger than `window` seconds. Memory is bounded: the least
recently touched keys are forgotten first.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator


class _Window:
    def __init__(self, limit: int, window: float, clock: Callable[[], float], max_keys: int):
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._pending: dict[str, int] = {}
        """Attempts still waiting on the directory: each may yet be a failure."""

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may try again (0: now)."""
        if self.limit <= 0:
            return 0.0
        now = self.clock()
        times = self._recent(key, now) or ()
        if len(times) + self._pending.get(key, 0) < self.limit:
            return 0.0
        if len(times) < self.limit:
            return 1.0  # blocked by attempts still in flight: concurrent guesses wait their turn
        return times[-self.limit] + self.window - now

    def begin(self, key: str) -> None:
        if self.limit > 0:
            self._pending[key] = self._pending.get(key, 0) + 1

    def end(self, key: str) -> None:
        left = self._pending.get(key, 0) - 1
        if left > 0:
            self._pending[key] = left
        else:
            self._pending.pop(key, None)

    def fail(self, key: str) -> None:
        if self.limit <= 0:
            return
        now = self.clock()
        times = self._recent(key, now)
        if times is None:
            times = self._failures[key] = deque(maxlen=self.limit)
        times.append(now)
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def reset(self, key: str) -> None:
        self._failures.pop(key, None)

    def __len__(self) -> int:
        return len(self._failures)


class LoginThrottle:
    """`limit` failed logins per `window` seconds for one user name, `address_limit` for one client address.

    A limit of 0 turns that side off. A successful login clears the user's failures (not the address's:
    one right password must not reopen an address that is guessing others).
    """

    def __init__(self, user_limit: int = 5, address_limit: int = 20, window: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self.users = _Window(user_limit, window, clock, max_keys)
        self.addresses = _Window(address_limit, window, clock, max_keys)

    def retry_after(self, user: str | None, address: str | None) -> int:
        """Whole seconds to wait before trying (0: go ahead)."""
        wait = 0.0
        if user:
            wait = max(wait, self.users.retry_after(user))
        if address:
            wait = max(wait, self.addresses.retry_after(address))
        return math.ceil(wait) if wait > 0 else 0

    @contextlib.contextmanager
    def attempt(self, user: str | None, address: str | None) -> Iterator[None]:
        """While a login waits on the directory it counts against both limits, so many concurrent
        guesses cannot all pass `retry_after` before the first failure is recorded."""
        windows = [(w, k) for w, k in ((self.users, user), (self.addresses, address)) if k]
        for window, key in windows:
            window.begin(key)
        try:
            yield
        finally:
            for window, key in windows:
                window.end(key)

    def failed(self, user: str | None, address: str | None) -> None:
        if user:
            self.users.fail(user)
        if address:
            self.addresses.fail(address)

    def succeeded(self, user: str) -> None:
        self.users.reset(user)
