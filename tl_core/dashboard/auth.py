"""Who may use the dashboard: anyone on this machine; from elsewhere, only with the password (Jupyter's model).

Pure logic, no Streamlit: `pages/ui/auth.py` renders the gate.
"""

from __future__ import annotations

import hmac
import ipaddress

PASSWORD_ENV = "TL_STUDIO_PASSWORD"


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
