"""The login gate, rendered before any page when the server is reachable from other machines."""

from __future__ import annotations

import os

import streamlit as st

from tl_core.dashboard import auth


def expected_password() -> str | None:
    """TL_STUDIO_PASSWORD from the environment, else from Streamlit secrets (`.streamlit/secrets.toml`)."""
    if value := os.environ.get(auth.PASSWORD_ENV):
        return value
    try:
        return st.secrets.get(auth.PASSWORD_ENV)
    except FileNotFoundError:  # no secrets file at all
        return None


def require_login() -> None:
    """Stop the script unless the server is local-only or this session has given the password."""
    address = st.get_option("server.address")
    if not auth.is_exposed(address) or st.session_state.get("authenticated"):
        return
    expected = expected_password()
    st.title("TL Studio")
    if not expected:
        st.error(f"This server listens on {address or 'all interfaces'} and no password is set: set "
                 f"{auth.PASSWORD_ENV} (or put it in .streamlit/secrets.toml) and restart, or listen on localhost.")
        st.stop()
    with st.form("login"):
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Sign in")
    if submitted and auth.check(password, expected):
        st.session_state.authenticated = True
        st.rerun()
    if submitted:
        st.error("Wrong password.")
    st.stop()
