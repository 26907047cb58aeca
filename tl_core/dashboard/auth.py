"""Who may use the dashboard: anyone on this machine; from elsewhere, only with the password (Jupyter's model).

Pure logic, no Streamlit: `app_pages/ui/auth.py` renders the in-page gate and `tl_core/dashboard/gate.py` closes
Streamlit's own HTTP routes and websocket; both ask this module, so one throttle and one signing key serve both.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PASSWORD_ENV = "TL_STUDIO_PASSWORD"
COOKIE = "tl_studio_session"
SESSION_S = 12 * 3600  # a signed-in browser stays in for a working day

log = logging.getLogger("tl_studio.auth")


def is_exposed(address: str | None) -> bool:
    """Whether a server bound to `address` can be reached from other machines (unset or empty: all interfaces)."""
    address = (address or "").strip().strip("[]")
    if address == "localhost":
        return False
    try:
        return not ipaddress.ip_address(address).is_loopback
    except ValueError:  # empty, 0.0.0.0-like wildcard names or a host name: assume reachable
        return True


def check(password: str | None, expected: str | None) -> bool:
    """Constant-time comparison; no expected password means nobody gets in."""
    if not password or not expected:
        return False
    return hmac.compare_digest(password.encode(), expected.encode())


@dataclass
class Throttle:
    """Wrong passwords cost time: a few are free, then each waits twice as long as the last, then the key is locked
    out for a while. Keys are client addresses and browser sessions, so neither a new tab nor a new address alone
    buys fresh guesses. While a key waits, even the right password is refused: the wait is the only answer."""

    free: int = 3
    lockout_after: int = 10
    lockout_s: float = 900.0
    max_delay_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)  # key -> (wrong guesses, blocked until)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def delay(self, failures: int) -> float:
        """Seconds a key waits after its `failures`-th wrong password."""
        if failures >= self.lockout_after:
            return self.lockout_s
        if failures < self.free:
            return 0.0
        return min(2.0 ** (failures - self.free), self.max_delay_s)

    def wait(self, *keys: str) -> float:
        """Seconds until every key may try again (0: now)."""
        now = self.clock()
        with self._lock:
            return max([self._failures.get(k, (0, now))[1] - now for k in keys] + [0.0])

    def failed(self, *keys: str) -> None:
        now = self.clock()
        with self._lock:
            if len(self._failures) > 10_000:  # addresses are cheap to make up: forget the ones free again
                self._failures = {k: v for k, v in self._failures.items() if v[1] > now}
            for k in keys:
                n = self._failures.get(k, (0, now))[0] + 1
                self._failures[k] = (n, now + self.delay(n))

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._failures.pop(k, None)


THROTTLE = Throttle()  # one per server process: the page form and the HTTP sign-in route share it


def attempt(password: str | None, expected: str | None, address: str, *keys: str) -> float | None:
    """One sign-in attempt from `address` (plus other keys such as the browser tab): None when it is let in,
    else the seconds to wait before the next try. Refused attempts are logged without the guess."""
    keys, throttle = (f"address:{address}", *keys), THROTTLE
    waiting = throttle.wait(*keys)
    if waiting > 0:
        log.warning("refused sign-in from %s: too many wrong passwords, %.0f s left to wait", address, waiting)
        return waiting
    if check(password, expected):
        throttle.succeeded(*keys)
        return None
    throttle.failed(*keys)
    waiting = throttle.wait(*keys)
    log.warning("refused sign-in from %s: wrong password; next try in %.0f s", address, waiting)
    return waiting


_SECRET = secrets.token_bytes(32)  # per process: a restart signs everybody out


def _signature(expires: int, expected: str) -> str:
    """Keyed by the process secret and the password: changing the password signs everybody out too."""
    key = hashlib.sha256(_SECRET + expected.encode()).digest()
    return hmac.new(key, str(expires).encode(), hashlib.sha256).hexdigest()


def session_token(expected: str, now: float | None = None) -> str:
    """The value of the sign-in cookie a successful sign-in sets."""
    expires = int((time.time() if now is None else now) + SESSION_S)
    return f"{expires}.{_signature(expires, expected)}"


def valid_token(token: str | None, expected: str | None, now: float | None = None) -> bool:
    """Whether `token` was signed by this process for this password and has not expired."""
    if not token or not expected or "." not in token:
        return False
    expires, signature = token.split(".", 1)
    if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(signature, _signature(int(expires), expected))
