"""The password gate: a server reachable from other machines asks for it before any page."""

from __future__ import annotations

import tomllib

from helpers import ROOT
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from tl_core.dashboard import auth

AUTH_SCRIPT = """
import streamlit as st
from pages.ui.auth import require_login

require_login()
st.markdown("the private page")
"""


def test_an_exposed_server_asks_for_the_password_before_any_page(tmp_path, monkeypatch):
    assert tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]["address"] == "localhost"
    assert [auth.is_exposed(a) for a in ("localhost", "127.0.0.1", "::1", "[::1]")] == [False] * 4
    assert [auth.is_exposed(a) for a in ("0.0.0.0", "", None, "192.168.1.5", "::", "myhost")] == [True] * 6
    assert auth.check("s3cret", "s3cret") and not auth.check("s3creT", "s3cret")
    assert not auth.check("", "") and not auth.check("x", None)

    script = tmp_path / "app.py"
    script.write_text(AUTH_SCRIPT)
    private = lambda at: any(m.value == "the private page" for m in at.markdown)
    old = st_config.get_option("server.address")
    monkeypatch.delenv(auth.PASSWORD_ENV, raising=False)
    try:
        st_config.set_option("server.address", "localhost")
        assert private(AppTest.from_file(str(script)).run())

        st_config.set_option("server.address", "0.0.0.0")
        at = AppTest.from_file(str(script)).run()
        assert not private(at) and auth.PASSWORD_ENV in at.error[0].value  # exposed without a password: closed

        monkeypatch.setenv(auth.PASSWORD_ENV, "s3cret")
        at = AppTest.from_file(str(script)).run()
        assert not private(at) and at.text_input(key="login_password")
        at.text_input(key="login_password").input("guess")
        at.button[0].click().run()
        assert not private(at) and at.error[0].value == "Wrong password."
        at.text_input(key="login_password").input("s3cret")
        at.button[0].click().run()
        assert private(at) and not at.error
    finally:
        st_config.set_option("server.address", old)
