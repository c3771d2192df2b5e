"""Testing hook: RUNSTREAM_FAILPOINT=<name>:<seconds> pauses a process at the failpoint `name`
(e.g. loader.after_copy, inside the loader's transaction; compactor.after_swap, inside the
compactor's) so that a test can kill it right there."""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)


def failpoint(name: str) -> None:
    spec = os.environ.get("RUNSTREAM_FAILPOINT", "")
    if spec.startswith(name + ":"):
        log.warning("failpoint %s: pausing", name)
        time.sleep(float(spec.split(":", 1)[1]))
