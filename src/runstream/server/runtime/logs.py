"""Server logging: plain text for people, or one JSON object per line for log collectors,
with the id of the request being handled (`x-request-id` from the caller, or a new one)."""

from __future__ import annotations

import contextvars
import ctypes
import json
import logging
import os
import sys
import time
import uuid

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

TEXT_FORMAT = "%(asctime)s %(processName)s %(levelname)s %(name)s %(message)s%(request_suffix)s"


def new_request_id(given: str | None = None) -> str:
    """The caller's id when it gave a sane one, else a new one; bound to this task."""
    rid = given if given and len(given) <= 128 and given.isprintable() else uuid.uuid4().hex[:16]
    request_id.set(rid)
    return rid


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        record.request_id = rid
        record.request_suffix = f" [request {rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process, message, request_id, error."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "")
        if rid:
            out["request_id"] = rid
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Set up the root logger of this process; spawned loader processes call it again with
    the same values (RUNSTREAM_LOG_LEVEL / RUNSTREAM_LOG_FORMAT carry them across)."""
    os.environ["RUNSTREAM_LOG_LEVEL"], os.environ["RUNSTREAM_LOG_FORMAT"] = level, fmt
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def configure_from_env() -> None:
    configure(os.environ.get("RUNSTREAM_LOG_LEVEL", "INFO"), os.environ.get("RUNSTREAM_LOG_FORMAT", "text"))


def announce(message: str) -> None:
    """A line for whoever started the server (listening, stopping), in the log format chosen."""
    if os.environ.get("RUNSTREAM_LOG_FORMAT") == "json":
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        message = json.dumps({"time": stamp, "level": "info", "logger": "runstream.server", "message": message})
    print(message, flush=True)


PR_SET_NAME = 15  # prctl(2)


def name_process(name: str) -> None:
    """Name this process as `ps`, `top` and /proc/PID/comm show it (Linux; at most 15 bytes), so
    an operator tells role all's loader and compactor processes apart. Elsewhere: nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):  # no prctl here: the name is only a convenience
        return
