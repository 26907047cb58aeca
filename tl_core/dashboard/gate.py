"""The sign-in gate in front of Streamlit's own server, for a server reachable from other machines.

The page form alone guards only what the app script draws: Streamlit's routes (uploads, media, metrics, host
config) and the websocket's own messages (upload URLs, `clear_cache`, the script path in the first message) work
for anyone who can connect. This ASGI middleware, given to `st.App` by `streamlit_app.py` with the server's settings, closes all of them: an
exposed server answers a client without a valid signed sign-in cookie with the sign-in page (401) for page routes,
403 for every other route, and refuses the websocket before the handshake. Only the health check and the sign-in
route stay open; a right password there sets the cookie. On localhost (the default) it passes everything through.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.middleware import Middleware
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from tl_core.dashboard import auth

SIGN_IN = "/_tl/sign-in"
HEALTH = ("/_stcore/health", "/healthz")
CLOSED_PREFIXES = ("/_stcore/", "/media/", "/component/", "/static/", "/app/static/", "/_tl/")  # never a page
MAX_FORM_BYTES = 4096


@dataclass(frozen=True)
class ServerSettings:
    """What the gate needs of the server, read per request by the frame (Streamlit's config and secrets): the engine
    itself never imports Streamlit."""

    address: str | None
    base_path: str  # server.baseUrlPath
    secure: bool  # served over TLS: the cookie is sent only over it
    password: str | None


def sign_in_html(message: str = "", base: str = "") -> str:
    """A self-contained page (no script, no static file): the one thing a stranger can load."""
    note = f'<p style="color:#b91c1c">{html.escape(message)}</p>' if message else ""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>Sign in · TL Studio</title></head>'
            f'<body style="font-family:sans-serif;max-width:24rem;margin:4rem auto"><h1>TL Studio</h1>{note}'
            f'<form method="post" action="{html.escape(base + SIGN_IN)}"><label>Password '
            f'<input type="password" name="password" autofocus></label> <button type="submit">Sign in</button></form>'
            f'</body></html>')


async def _form_password(receive: Receive) -> str | None:
    """The `password` field of a small url-encoded form; None when the body is larger than a form needs."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_FORM_BYTES:
            return None
        if not message.get("more_body"):
            break
    return parse_qs(body.decode("utf-8", "replace")).get("password", [""])[0]


class SignInGate:
    """Pure ASGI middleware (HTTP and websocket alike), outermost in front of Streamlit's own stack."""

    def __init__(self, app: ASGIApp, settings: Callable[[], ServerSettings]) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.settings()
        if scope["type"] not in ("http", "websocket") or not auth.is_exposed(server.address):
            await self.app(scope, receive, send)
            return
        base = "/".join(["", *filter(None, [(server.base_path or "").strip("/")])])  # "" or "/prefix"
        path = scope["path"][len(base):] if scope["path"].startswith(base) else scope["path"]
        expected = server.password
        if path in HEALTH or (expected and auth.valid_token(self._cookie(scope), expected)):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await WebSocketClose(code=1008)(scope, receive, send)  # before accept: the client gets HTTP 403
            return
        response = await self._answer(scope, receive, path, base, expected, server.secure)
        await response(scope, receive, send)

    @staticmethod
    def _cookie(scope: Scope) -> str | None:
        raw = b"; ".join(v for k, v in scope.get("headers", []) if k == b"cookie").decode("latin-1")
        morsel = SimpleCookie(raw).get(auth.COOKIE) if raw else None
        return morsel.value if morsel else None

    async def _answer(self, scope: Scope, receive: Receive, path: str, base: str, expected: str | None,
                      secure: bool) -> Response:
        """What a client not signed in gets: the sign-in page, its answer, or a refusal."""
        if not expected:
            return PlainTextResponse(f"This server is reachable from other machines and no password is set: set "
                                     f"{auth.PASSWORD_ENV} and restart, or listen on localhost.", 403)
        if path == SIGN_IN and scope["method"] == "POST":
            password = await _form_password(receive)
            if password is None:
                return PlainTextResponse("Request too large.", 413)
            address = (scope.get("client") or ("unknown", 0))[0]
            wait = auth.attempt(password, expected, address)
            if wait is None:
                response = RedirectResponse(base + "/", 303)
                response.set_cookie(auth.COOKIE, auth.session_token(expected), max_age=auth.SESSION_S, path=base + "/",
                                    httponly=True, samesite="lax", secure=secure)
                return response
            message = "Wrong password." if wait <= 0 else f"Too many wrong passwords: wait {wait:.0f} s, then try again."
            return HTMLResponse(sign_in_html(message, base), 401)
        if scope["method"] in ("GET", "HEAD") and (path == SIGN_IN or not path.startswith(CLOSED_PREFIXES)):
            return HTMLResponse(sign_in_html(base=base), 401)
        return PlainTextResponse("Sign in first.", 403)


def middleware(settings: Callable[[], ServerSettings]) -> list[Middleware]:
    return [Middleware(SignInGate, settings=settings)]
