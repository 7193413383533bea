"""The instructor key: the one way to the Class page, which shows every lab on the server.

The key comes from the environment (`VISLAB_INSTRUCTOR_KEY`, set when the server starts); unset or empty, the
Class page is off. It is only ever compared, never written: not to a file, a URL, a log or a page. The
comparison is `hmac.compare_digest` on SHA-256 digests of both sides, so it takes the same time whatever was
typed (a wrong length included: the digests are always 32 bytes). Failures are counted per client (its IP
address, or one bucket for every local connection): after MAX_FAILURES within WINDOW_S seconds the client is
locked out for LOCK_S seconds, the right key included, and told for how long. The counts live in memory,
per server process, behind a lock (sessions run in threads); a restart forgets them, which costs a guesser
a restart of the server per few guesses.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from dataclasses import dataclass, field

ENV = "VISLAB_INSTRUCTOR_KEY"
MAX_FAILURES = 5  # wrong keys a client may type within WINDOW_S ...
WINDOW_S = 60.0
LOCK_S = 60.0  # ... before it is refused this long, whatever it types


def configured() -> bool:
    """Whether this server has an instructor key (without saying anything about it)."""
    return bool(os.environ.get(ENV, ""))


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def matches(given: object) -> bool:
    """Whether `given` is the instructor key, in constant time; False when no key is configured."""
    key = os.environ.get(ENV, "")
    if not key or not isinstance(given, str):
        return False
    return hmac.compare_digest(_digest(given), _digest(key))


@dataclass(frozen=True)
class Verdict:
    """What a key check said: `ok`, else why not (`locked_s`: seconds until the client may try again, 0 when
    it was just a wrong key) and the message to show."""

    ok: bool
    message: str = ""
    locked_s: float = 0.0

    def __bool__(self) -> bool:
        return self.ok


@dataclass
class Limiter:
    """Failed tries per client within a sliding window, and the lockout that follows too many. `clock` is
    injectable so a test can move time on instead of sleeping."""

    max_failures: int = MAX_FAILURES
    window_s: float = WINDOW_S
    lock_s: float = LOCK_S
    clock: object = time.monotonic
    _failures: dict = field(default_factory=dict)  # client -> times of its recent failures
    _locked: dict = field(default_factory=dict)  # client -> when its lockout ends
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def locked_for(self, client: str) -> float:
        """Seconds `client` must still wait (0: it may try)."""
        with self._guard:
            return self._locked_for(client, self.clock())

    def _locked_for(self, client: str, now: float) -> float:
        until = self._locked.get(client)
        if until is None:
            return 0.0
        if now >= until:
            del self._locked[client]
            return 0.0
        return until - now

    def fail(self, client: str) -> float:
        """Count a failure of `client`; the seconds it is now locked out (0: not yet)."""
        with self._guard:
            now = self.clock()
            recent = [t for t in self._failures.get(client, []) if now - t < self.window_s] + [now]
            if len(recent) >= self.max_failures:
                self._failures.pop(client, None)
                self._locked[client] = now + self.lock_s
                return self.lock_s
            self._failures[client] = recent
            if len(self._failures) > 10_000:  # a flood of clients: forget the oldest, never grow without end
                self._failures.pop(next(iter(self._failures)))
            return 0.0

    def succeed(self, client: str) -> None:
        with self._guard:
            self._failures.pop(client, None)


LIMITER = Limiter()  # this server's counts (a test may put in one with its own clock)


def _wait(seconds: float) -> str:
    s = max(1, round(seconds))
    return f"{s} second{'s' if s != 1 else ''}"


def check(given: object, client: str, limiter: Limiter | None = None) -> Verdict:
    """Check a key typed by `client`, counting a failure against it; a locked-out client is refused without
    its key being looked at (the right key included), with how long it must wait."""
    limiter = limiter or LIMITER
    if not configured():
        return Verdict(False, f"No instructor key is set on this server (start it with {ENV}=...).")
    wait = limiter.locked_for(client)
    if wait:
        return Verdict(False, f"Too many wrong keys from here: try again in {_wait(wait)}.", wait)
    if matches(given):
        limiter.succeed(client)
        return Verdict(True)
    locked = limiter.fail(client)
    if locked:
        return Verdict(False, f"Wrong key. Too many wrong keys from here: try again in {_wait(locked)}.", locked)
    return Verdict(False, "Wrong key.")
