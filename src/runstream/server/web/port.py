"""The HTTP port's server: the aiohttp application and runner with runstream's limits. Request
bodies are capped (body.py); a connection must send a whole request's headers within
--http-request-timeout of opening or of its last answer, so a client that sends them a byte at a
time (slowloris) is cut off; and a request aiohttp refuses before any handler (a request line or
header over 8 KiB, bytes that are not HTTP) is one log line, rate-limited as every refusal is,
not a traceback each."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from runstream.errors import InvalidArgument
from runstream.server.rpc.grpc import log_failure
from runstream.server.runtime.config import Settings
from runstream.server.web import body


def application(settings: Settings) -> web.Application:
    # client_max_size bounds request.read() and request.post(), for any handler that would use
    # them; ours read through body.py, and uploads stream.
    app = web.Application(client_max_size=settings.max_request_body)
    app[body.LIMITS] = body.Limits(
        settings.max_request_body, settings.max_upload_bytes, settings.http_request_timeout_s
    )
    return app


def runner(app: web.Application, settings: Settings) -> web.AppRunner:
    # aiohttp's keep-alive timer runs from a connection's start and from each answer until the
    # next request's headers are complete: it is the header timeout as well as the idle one.
    return web.AppRunner(app, access_log=None, keepalive_timeout=settings.http_request_timeout_s, logger=_ProtocolLog())


class _ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp.server's log: a request refused while parsing is one line (without the bytes it
    sent, which may hold a token); anything else keeps its traceback, being a bug."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: Any, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            reason = str(exc_info.message).split(":", 1)[0][:200]
            log_failure("HTTP request", InvalidArgument(f"{exc_info.code} {reason}"))
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)
