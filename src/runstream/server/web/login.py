"""/login for browsers: a form that takes a token, checks it with the same guard as every RPC,
and keeps it in an HttpOnly, SameSite=Strict cookie (Secure over TLS) that the web UI's calls
are signed with (calls.py); /logout forgets it. Both take only a form of this server's own
pages (calls.same_origin), so no other page signs a browser in or out. Scripts send
`Authorization: Bearer ...` instead."""

from __future__ import annotations

import html
from urllib.parse import parse_qs

from aiohttp import web

from runstream.errors import InvalidArgument, Unauthenticated
from runstream.server.auth.guard import Guard
from runstream.server.rpc.grpc import log_failure
from runstream.server.web import body
from runstream.server.web.calls import COOKIE, same_origin

MAX_AGE_S = 30 * 86_400
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>runstream: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 32rem; margin: 4rem auto">
<h1>runstream</h1>
<p>{note}</p>
<form method="post" action="/login">
<label>API token <input name="token" type="password" autocomplete="off" size="60" required></label>
<button type="submit">Sign in</button>
</form>
<p style="color: #666">An admin makes tokens with <code>runstream tokens create</code>.</p>
</body></html>
"""


class _TokenCall:
    """The guard's view of a sign-in: the token as if sent in `authorization`."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def add_login_routes(app: web.Application, guard: Guard) -> None:
    async def form(request: web.Request) -> web.Response:
        note = "Sign in with your API token." if guard.enabled else "This server does not ask for tokens."
        return _page(note, 200)

    async def sign_in(request: web.Request) -> web.Response:
        if not same_origin(request):
            return _page("Sign in from this server's own page.", 403)
        try:
            token = await _token(request)
            await guard.authenticate(_TokenCall(token))
        except (InvalidArgument, body.TooLarge, Unauthenticated) as exc:
            _, message = log_failure("POST /login", exc)
            return _page(message, _status(exc))
        response = web.Response(status=303, headers={"Location": "/", "Cache-Control": "no-store"})
        response.set_cookie(
            COOKIE,
            token,
            max_age=MAX_AGE_S,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    async def sign_out(request: web.Request) -> web.Response:
        if not same_origin(request):
            return _page("Sign out from this server's own pages.", 403)
        response = web.Response(status=303, headers={"Location": "/login"})
        response.del_cookie(COOKIE, path="/")
        return response

    app.router.add_get("/login", form)
    app.router.add_post("/login", sign_in)
    app.router.add_post("/logout", sign_out)


async def _token(request: web.Request) -> str:
    """The token field of the sign-in form."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise InvalidArgument("send the sign-in form (application/x-www-form-urlencoded)")
    try:
        fields = parse_qs((await body.read(request)).decode(), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        raise InvalidArgument("the sign-in form is not a form") from None
    return (fields.get("token") or [""])[0].strip()


def _status(exc: Exception) -> int:
    if isinstance(exc, body.TooLarge):
        return 413
    return 401 if isinstance(exc, Unauthenticated) else 400


def _page(note: str, status: int) -> web.Response:
    return web.Response(
        text=PAGE.format(note=html.escape(note)),
        status=status,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'",
        },
    )
