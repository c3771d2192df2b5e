"""One HTTP request as the guard and the handlers see it, and the one rule for the sign-in cookie.

A browser sends its cookies with every request to this host, whichever page makes it:
SameSite keeps other sites out, not pages on another port of the same host. So the cookie
/login sets signs only the web UI's own calls (UI_CALLS: the JSON API by fetch(), which another
origin cannot send without a CORS preflight this server never grants, and the live tail by
EventSource, which cannot set a header and changes nothing), and only when the browser says
the page is of this origin (SAME_ORIGIN). On any other request the cookie is not read: with auth
on, such a call has no token and is refused. Scripts and MLflow's client send
`Authorization: Bearer ...`, which a page of another origin cannot set without a preflight.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

PREFIX = "/api/v1"  # the JSON API (api.py), where the web UI's calls go
COOKIE = "runstream_token"
# (method, path or path prefix ending in "/", content type) of each call assets/app.js makes.
UI_CALLS = (("POST", PREFIX + "/", "application/json"), ("GET", PREFIX + "/tail", ""))


class HttpCall:
    """What the handlers and the guard read of a call, for one HTTP request: its metadata."""

    def __init__(self, request: web.Request) -> None:
        self.request = request  # for the few handlers that stream a body (MLflow's artifact PUT)
        metadata = []
        header = request.headers.get("Authorization")
        cookie = request.cookies.get(COOKIE)
        if header:
            metadata.append(("authorization", header))
        elif cookie and is_ui_call(request):
            metadata.append(("authorization", f"Bearer {cookie}"))
        if user := request.headers.get("runstream-user"):
            metadata.append(("runstream-user", user))
        self._metadata = tuple(metadata)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def is_ui_call(request: web.Request) -> bool:
    """One of the web UI's own calls, from one of its pages."""
    for method, path, content_type in UI_CALLS:
        on_path = request.path.startswith(path) if path.endswith("/") else request.path == path
        if request.method == method and on_path and (not content_type or request.content_type == content_type):
            return same_origin(request)
    return False


def same_origin(request: web.Request) -> bool:
    """Whether the page that made this request is of this server's origin. Browsers say so in
    Sec-Fetch-Site; older ones only in Origin (on POSTs, and on any cross-origin request).
    Without either it is not a browser's cross-origin request (scripts, curl)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("Origin")
    if origin is not None:
        return urlsplit(origin).netloc.lower() == request.host.lower()
    return True
