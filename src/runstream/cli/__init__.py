"""The `runstream` command: `server` and `demo`, and the client side: runs, experiments,
metrics, artifacts, models, tokens and dead letters. Every mistake is one line on stderr and
a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys

from runstream import extras
from runstream.errors import RunstreamError
from runstream.extras import ExtraMissing


def parser() -> argparse.ArgumentParser:
    from runstream.cli import admin, artifacts, models, runs, server, sync

    p = argparse.ArgumentParser(prog="runstream", description=__doc__)
    p.add_argument("--version", action="version", version=f"runstream {extras.version()}", help="print the version")
    sub = p.add_subparsers(dest="command", required=True)
    for module in (server, runs, artifacts, models, admin, sync):
        module.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (RunstreamError, ExtraMissing, ValueError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):
            return _reader_gone()
        print(f"runstream: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _reader_gone() -> int:
    """The reader went away (runstream ... | head): stop quietly, as a shell reports SIGPIPE."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141
