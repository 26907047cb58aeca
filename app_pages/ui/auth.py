"""The sign-in gate the frame draws before any page when the server is reachable from other machines."""

from __future__ import annotations

import math
import os
import uuid

import streamlit as st

from tl_core.dashboard import auth
from tl_core.dashboard.gate import ServerSettings


def expected_password() -> str | None:
    """TL_STUDIO_PASSWORD from the environment, else from Streamlit secrets (`.streamlit/secrets.toml`)."""
    if value := os.environ.get(auth.PASSWORD_ENV):
        return value
    try:
        return st.secrets.get(auth.PASSWORD_ENV)
    except FileNotFoundError:  # no secrets file at all
        return None


def server_settings() -> ServerSettings:
    """What the ASGI sign-in gate needs, read from Streamlit's config and secrets on every request."""
    from streamlit import config

    return ServerSettings(config.get_option("server.address"), config.get_option("server.baseUrlPath") or "",
                          bool(config.get_option("server.sslCertFile")), expected_password())


def signed_in() -> bool:
    """True on a local-only server, for a session that gave the password, or for a browser that holds the session
    cookie the HTTP sign-in route set (the gate in front of Streamlit already checked it; checked again here)."""
    if not auth.is_exposed(st.get_option("server.address")) or st.session_state.get("authenticated"):
        return True
    if auth.valid_token(st.context.cookies.get(auth.COOKIE), expected_password()):
        st.session_state.authenticated = True
    return bool(st.session_state.get("authenticated"))


def _session_key() -> str:
    """This browser session's throttle key: a new tab is a new session but not a new address."""
    if "auth_session" not in st.session_state:
        st.session_state.auth_session = uuid.uuid4().hex
    return f"session:{st.session_state.auth_session}"


def sign_in_page() -> None:
    """The only page before sign-in: the password form, throttled per client address and per session."""
    address = st.get_option("server.address")
    expected = expected_password()
    st.title("TL Studio")
    if not expected:
        st.error(f"This server listens on {address or 'all interfaces'} and no password is set: set "
                 f"{auth.PASSWORD_ENV} (or put it in .streamlit/secrets.toml) and restart, or listen on localhost.")
        return
    with st.form("login"):
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Sign in")
    if not submitted:
        return
    wait = auth.attempt(password, expected, st.context.ip_address or "unknown", _session_key())
    if wait is None:
        st.session_state.authenticated = True
        st.rerun()
    st.error("Wrong password." if wait <= 0 else f"Too many wrong passwords: wait {math.ceil(wait)} s, then try again.")
