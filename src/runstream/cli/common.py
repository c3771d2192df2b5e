"""What every client-side command shares: the server address, the output format, and run
ids and experiments as people type them (a unique prefix of a run id, an experiment's name
or id)."""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

from runstream.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from runstream.client.query import QueryClient
    from runstream.client.tracking import Client

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = argparse._SubParsersAction
MIN_PREFIX = 6
_HEX = re.compile(r"[0-9a-f-]+")


def add_url(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=None,  # the client reads RUNSTREAM_URL, then the default (client/settings.py)
        help="the server: host:port, or grpcs://host:port for TLS (default: RUNSTREAM_URL, else 127.0.0.1:50051)",
    )


def add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format", choices=["table", "json", "csv"], default="table", help="table for people, json or csv for scripts"
    )


def _hyphenated(prefix: str) -> str:
    """A prefix of a run id in its stored spelling (lowercase, hyphens after 8, 12, 16, 20 digits)."""
    digits = prefix.replace("-", "")
    parts, start = [], 0
    for length in (8, 4, 4, 4, 12):
        if start >= len(digits):
            break
        parts.append(digits[start : start + length])
        start += length
    return "-".join(parts)


def resolve_run(query: QueryClient, text: str) -> str:
    """The run id that `text` (a whole id, or a unique prefix of at least 6 characters, as the
    tables show them) names; an ambiguous prefix lists the runs it matches."""
    given = text.strip().lower()
    digits = given.replace("-", "")
    if len(digits) == 32:
        return given
    if len(digits) < MIN_PREFIX or not _HEX.fullmatch(given):
        raise InvalidArgument(f"{text!r} is not a run id or a prefix of one (at least {MIN_PREFIX} hex digits)")
    prefix = _hyphenated(given)
    page = query.search_runs(filter=f"attributes.run_id LIKE '{prefix}%'", max_results=10, include_deleted=True)
    if not page.runs:
        raise NotFound(f"run {text}: no run id starts with {prefix}")
    if len(page.runs) > 1:
        found = ", ".join(f"{r.run_id} ({r.name})" for r in page.runs)
        raise InvalidArgument(f"run id prefix {text!r} is ambiguous; it matches {found}")
    return str(page.runs[0].run_id)


def resolve_experiment(client: Client, text: str) -> str:
    """The id of the experiment `text` names: its id when it is one, else its name."""
    if text.isdigit():
        try:
            return str(client.get_experiment(text).experiment_id)
        except NotFound:
            pass  # a name made of digits
    return str(client.get_experiment(name=text).experiment_id)
