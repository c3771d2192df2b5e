"""Console capture: what a writer's process prints to stdout and stderr, kept with the run as
the artifact `logs/<writer>.txt`, uploaded every RUNSTREAM_CONSOLE_UPLOAD_S seconds (30) while
it grows and once more when the writer ends. `runstream runs logs RUN` shows it.

Python's `sys.stdout` and `sys.stderr` are wrapped: every write still goes where it went, and a
copy goes into the log, in the order the process wrote it (W&B's "wrap" mode). Output written
below Python (C extensions writing to the file descriptors, child processes) is not captured.
`RUNSTREAM_CONSOLE=0` turns it off. One capture per process: the first writer started gets it.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from runstream.client import lifecycle, settings

log = logging.getLogger(__name__)

_active: ConsoleCapture | None = None
_active_lock = threading.Lock()


def enabled() -> bool:
    return settings.current().console


class _Tee:
    """A text stream that writes through to `target` and copies into the capture."""

    def __init__(self, target: TextIO, capture: ConsoleCapture) -> None:
        self._target = target
        self._capture = capture

    def write(self, text: str) -> int:
        written = self._target.write(text)
        self._capture.append(text)
        return written

    def flush(self) -> None:
        self._target.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, buffer...: the real stream's
        return getattr(self._target, name)


class ConsoleCapture:
    def __init__(self, upload: Callable[[Path], object], interval: float) -> None:
        self._upload = upload
        self._interval = interval
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()  # a forked child inherits the capture; only this process closes it
        # Not a TemporaryDirectory: its finalizer would run in a forked child at exit too, and
        # delete the parent's log from under it.
        self._dir = Path(tempfile.mkdtemp(prefix="runstream-console-"))
        self.path = self._dir / "console.txt"
        self._file = self.path.open("a", encoding="utf-8", errors="replace")
        self._written = 0
        self._uploaded = 0
        self._stdout, self._stderr = sys.stdout, sys.stderr
        if sys.stdout is not None:  # None under pythonw and some daemons: nothing to copy
            sys.stdout = _Tee(sys.stdout, self)
        if sys.stderr is not None:
            sys.stderr = _Tee(sys.stderr, self)
        # A forked child (a data loader worker) keeps writing through the tee into the same
        # file. What is buffered is written out first (or both processes would write it), under
        # the lock, which the child then replaces: another thread may hold it at the fork.
        lifecycle.around_fork(before=self._before_fork, in_parent=self._lock_release, in_child=self._after_fork)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runstream-console", daemon=True)
        self._thread.start()

    def _before_fork(self) -> None:
        self._lock.acquire()
        if not self._file.closed:
            self._file.flush()

    def _lock_release(self) -> None:
        self._lock.release()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def append(self, text: str) -> None:
        with self._lock:
            if self._closed:  # a stream kept from before close (a logging handler): written through only
                return
            self._file.write(text)
            self._written += len(text)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._send()

    def _send(self, last: bool = False) -> None:
        with self._lock:
            if self._written == self._uploaded:
                return
            self._file.flush()
            written = self._written
        try:
            self._upload(self.path)
            self._uploaded = written
        except Exception as exc:  # the server away: the next upload (or the last) sends it all
            if last:  # nothing comes after this one: say what is lost
                log.warning("the console log (%d characters) could not be uploaded: %s", written, exc)
            else:
                log.debug("console log upload failed, trying again later: %s", exc)

    def close(self) -> None:
        """Stop copying, and upload what the log holds."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
        if isinstance(sys.stdout, _Tee) and sys.stdout._capture is self:
            sys.stdout = self._stdout
        if isinstance(sys.stderr, _Tee) and sys.stderr._capture is self:
            sys.stderr = self._stderr
        if os.getpid() != self._pid:  # a forked child: what it wrote goes in; the upload is the parent's
            with self._lock:
                self._file.flush()
            return
        self._stop.set()
        self._thread.join(5)
        self._send(last=True)
        self._file.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def start(upload: Callable[[Path], object]) -> ConsoleCapture | None:
    """The process's capture, unless one runs already or it is turned off. At interpreter
    exit it uploads what is left."""
    global _active
    if not enabled():
        return None
    with _active_lock:
        if _active is not None:
            return None
        _active = ConsoleCapture(upload, settings.current().console_upload_s)
        lifecycle.at_exit(functools.partial(stop, _active))
        return _active


def stop(capture: ConsoleCapture) -> None:
    global _active
    with _active_lock:
        if _active is capture:
            _active = None
    capture.close()
