"""Which of runstream's optional extras are installed, read from the package's own metadata, so
a command that needs one says what to install instead of failing on an import deep inside;
and the installed version."""

from __future__ import annotations

import re
from importlib import metadata

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_INNER = re.compile(r"\[([^\]]*)\]")
_EXTRA = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")


def version() -> str:
    """The installed runstream's version."""
    try:
        return metadata.version("runstream")
    except metadata.PackageNotFoundError:
        return "(not installed)"


class ExtraMissing(Exception):
    """An optional extra a command needs is not installed; the message names the pip command."""


def missing(extra: str) -> list[str]:
    """Distributions that `runstream[extra]` requires and this environment lacks."""
    try:
        requirements = metadata.requires("runstream") or []
    except metadata.PackageNotFoundError:  # running from a source tree: nothing to compare against
        return []
    absent = []
    for req in requirements:
        spec, _, marker = req.partition(";")
        found = _EXTRA.search(marker)
        name = _NAME.match(spec.strip())
        if found is None or found.group(1) != extra or name is None:
            continue
        if name.group(0) == "runstream":  # an extra made of others, e.g. runstream[server]
            for inner in _INNER.findall(spec):
                for name_ in inner.split(","):
                    absent += missing(name_.strip())
            continue
        try:
            metadata.version(name.group(0))
        except metadata.PackageNotFoundError:
            absent.append(name.group(0))
    return sorted(set(absent))


def require(extra: str, command: str) -> None:
    """Raise ExtraMissing with one line naming the install when `runstream[extra]` is incomplete."""
    absent = missing(extra)
    if absent:
        raise ExtraMissing(
            f"`runstream {command}` needs the {extra} extra: pip install 'runstream[{extra}]' "
            f"(missing: {', '.join(absent)})"
        )
