"""The password gate: a server reachable from other machines asks for it before any page."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import tomllib
import urllib.error
import urllib.request

import pytest
from helpers import APP, ROOT, streamlit_server
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from tl_core.dashboard import auth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """A fresh process-wide throttle on a clock the test moves."""
    c = Clock()
    monkeypatch.setattr(auth, "THROTTLE", auth.Throttle(clock=c))
    return c


def test_addresses_and_constant_time_check():
    assert tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]["address"] == "localhost"
    assert [auth.is_exposed(a) for a in ("localhost", "127.0.0.1", "::1", "[::1]")] == [False] * 4
    assert [auth.is_exposed(a) for a in ("0.0.0.0", "", None, "192.168.1.5", "::", "myhost")] == [True] * 6
    assert auth.check("s3cret", "s3cret") and not auth.check("s3creT", "s3cret")
    assert not auth.check("", "") and not auth.check("x", None)


def test_wrong_passwords_wait_longer_then_lock_out_and_are_logged_without_the_guess(clock, caplog):
    caplog.set_level(logging.WARNING, "tl_studio.auth")
    waits = []
    for _ in range(3):  # a few typos are free
        waits.append(auth.attempt("guess-one", "s3cret", "10.0.0.9", "session:a"))
    assert waits == [0, 0, 1]  # the third wrong one already costs a second
    assert auth.attempt("s3cret", "s3cret", "10.0.0.9", "session:a") == 1  # while it waits, even the right one is refused
    assert auth.attempt("s3cret", "s3cret", "10.0.0.9", "session:new-tab") == 1  # a new session from that address too
    assert auth.attempt("s3cret", "s3cret", "10.0.0.7", "session:a") == 1  # and that session from a new address
    delays = []
    for _ in range(7):
        clock.now += 10_000
        delays.append(auth.attempt("guess-two", "s3cret", "10.0.0.9", "session:a"))
    assert delays == [2, 4, 8, 16, 32, 60, 900]  # growing to a minute, then locked out for 15 minutes
    clock.now += 899
    assert auth.attempt("s3cret", "s3cret", "10.0.0.9") == 1
    assert auth.attempt("s3cret", "s3cret", "10.0.0.8") is None  # another address is not locked out by this one
    clock.now += 2
    assert auth.attempt("s3cret", "s3cret", "10.0.0.9", "session:a") is None  # after the lockout the right one works
    assert auth.attempt("wrong", "s3cret", "10.0.0.9", "session:a") == 0  # and the count starts again
    logged = caplog.text
    assert "refused sign-in from 10.0.0.9" in logged and "guess" not in logged and "s3cret" not in logged


def test_session_tokens_are_signed_for_this_password_and_expire():
    token = auth.session_token("s3cret", now=1000)
    assert auth.valid_token(token, "s3cret", now=1000 + auth.SESSION_S - 1)
    assert not auth.valid_token(token, "s3cret", now=1000 + auth.SESSION_S + 1)  # expired
    assert not auth.valid_token(token, "other", now=1000)  # the password changed
    expires, signature = token.split(".")
    assert not auth.valid_token(f"{int(expires) + 10**6}.{signature}", "s3cret", now=1000)  # a longer life is not signed
    assert not any(auth.valid_token(t, "s3cret", now=1000) for t in ("", "x", "1.2", None))


@pytest.fixture
def exposed(monkeypatch):
    old = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    monkeypatch.delenv(auth.PASSWORD_ENV, raising=False)
    yield
    st_config.set_option("server.address", old)


def shows_a_page(at: AppTest) -> bool:
    """Any trace of the app beyond the sign-in form: the sidebar, the home page's steps, a page title."""
    return bool(at.sidebar.children) or any(m.value.startswith("Fine-tune") for m in at.markdown) or any(
        t.value != "TL Studio" for t in at.title)


def test_frame_shows_only_the_sign_in_form_until_the_password(exposed, monkeypatch, clock, studio_home):
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not shows_a_page(at) and auth.PASSWORD_ENV in at.error[0].value  # exposed without a password: closed

    monkeypatch.setenv(auth.PASSWORD_ENV, "s3cret")
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not shows_a_page(at) and at.text_input(key="login_password")
    with pytest.raises(ValueError):
        at.switch_page("app_pages/3_Train.py")  # the pages are not even declared before sign-in
    for expected in ("Wrong password.", "Wrong password.", "Too many wrong passwords: wait 1 s, then try again."):
        at.text_input(key="login_password").input("guess")
        at.button[0].click().run()
        assert not shows_a_page(at) and at.error[0].value == expected
    at.text_input(key="login_password").input("s3cret")
    at.button[0].click().run()
    assert not shows_a_page(at) and at.error[0].value.startswith("Too many wrong passwords")  # waiting: refused
    clock.now += 2
    at.text_input(key="login_password").input("s3cret")
    at.button[0].click().run()
    assert shows_a_page(at) and not at.error and at.title[0].value == "TL Studio"
    at.switch_page("app_pages/3_Train.py").run()
    assert at.title[0].value == "Train" and not at.exception


def test_localhost_needs_no_password(studio_home, monkeypatch):
    monkeypatch.delenv(auth.PASSWORD_ENV, raising=False)
    assert st_config.get_option("server.address") in (None, "localhost")
    assert shows_a_page(AppTest.from_file(APP, default_timeout=120).run())


@pytest.fixture
def exposed_server(tmp_path):
    """`streamlit run` listening on all interfaces with a password; spoken to over loopback."""
    env = {**os.environ, "TL_STUDIO_HOME": str(tmp_path), "TL_STUDIO_RUNS": str(tmp_path / "runs"), auth.PASSWORD_ENV: "s3cret"}
    with streamlit_server(tmp_path, env, "0.0.0.0") as served:
        yield served


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def request(url: str, method: str = "GET", data: bytes | None = None, cookie: str | None = None):
    """(status, headers, body) without following redirects."""
    req = urllib.request.Request(url, data=data, method=method, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def websocket_status(port: int, cookie: str | None = None) -> int:
    """The HTTP status of a websocket handshake on Streamlit's stream (101: opened)."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET /_stcore/stream HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", f"Origin: http://127.0.0.1:{port}",
             "Sec-WebSocket-Protocol: streamlit", *([f"Cookie: {cookie}"] if cookie else [])]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return int(s.recv(1024).split(b" ", 2)[1])


def test_exposed_server_gives_a_stranger_nothing_but_the_sign_in_page(exposed_server):
    url, port, log = exposed_server
    status, _, body = request(url + "/")
    assert status == 401 and b'name="password"' in body and b"<script" not in body  # the sign-in page, not the app
    assert request(url + "/Train")[0] == 401
    assert request(url + "/_stcore/health")[0] == 200
    for path in ("/_stcore/metrics", "/_stcore/host-config", "/media/x.png", "/_stcore/upload_file/s/f", "/static/js/x.js"):
        assert request(url + path)[0] == 403, path
    assert request(url + "/_stcore/upload_file/s/f", "PUT", b"x" * 1000)[0] == 403
    assert websocket_status(port) == 403  # refused before the handshake: no upload URLs, no clear_cache

    status, _, body = request(url + "/_tl/sign-in", "POST", b"password=nope")
    assert status == 401 and b"Wrong password." in body
    status, headers, _ = request(url + "/_tl/sign-in", "POST", b"password=s3cret")
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in headers["Set-Cookie"] and cookie.startswith(auth.COOKIE + "=")
    status, _, body = request(url + "/", cookie=cookie)
    assert status == 200 and b"<script" in body  # Streamlit's app
    assert request(url + "/_stcore/host-config", cookie=cookie)[0] == 200
    assert websocket_status(port, cookie) == 101
    assert websocket_status(port, cookie[:-4] + "0000") == 403  # a forged signature
    assert "refused sign-in from 127.0.0.1" in log.read_text() and "nope" not in log.read_text()


CHROMIUM = "/usr/bin/chromium"
INJECTION = "![x](pixel.png) [Sign in again](phish)"


@pytest.fixture
def hostile_default(tmp_path):
    """The server's default dataset (prefs.json, written before the server starts) is a folder named to inject Markdown."""
    from PIL import Image

    from tl_core.data.sources import DatasetSpec

    data = tmp_path / "data" / INJECTION
    for cls in ("ants", "bees"):
        (data / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), (90 * i, 40, 200)).save(data / cls / f"{i}.png")
    (tmp_path / "prefs.json").write_text(json.dumps({"dataset": DatasetSpec(str(data)).to_dict(), "backbone": None, "run": None}))


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed")
def test_a_browser_signs_in_once_and_sees_names_as_text(hostile_default, exposed_server):
    from playwright.sync_api import expect, sync_playwright

    url, _, _ = exposed_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                                    "--disable-dev-shm-usage", "--no-first-run"])
        page = browser.new_page()
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)
        page.goto(url)
        page.get_by_label("Password").fill("s3cret")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_text("Fine-tune a pretrained ImageNet backbone")).to_be_visible()  # no second sign-in form
        nav = page.get_by_test_id("stSidebar")
        expect(nav.get_by_text(INJECTION)).to_be_visible()  # the folder's name, as typed
        expect(page.get_by_role("link", name="Sign in again")).to_have_count(0)
        expect(page.locator("img[src*='pixel.png']")).to_have_count(0)
        browser.close()
