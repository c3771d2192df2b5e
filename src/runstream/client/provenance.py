"""What produced a run: the git commit (and whether the tree had changes), the entry point,
Python and the versions of the packages the process imported. Recorded as run tags when the
SDK starts a run, so a model's lineage reaches the code that trained it."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

PREFIX = "runstream.source."
MAX_TAG = 8000


def source_tags() -> dict[str, str]:
    entry = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] not in ("", "-c") else Path.cwd()
    tags = {
        f"{PREFIX}entry_point": " ".join(sys.argv)[:MAX_TAG] if sys.argv else "",
        f"{PREFIX}python": sys.version.split()[0],
        f"{PREFIX}packages": _imported_packages()[:MAX_TAG],
    }
    tags.update(_git(entry.parent if entry.is_file() else entry))
    return {k: v for k, v in tags.items() if v}


def _git(folder: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        branch = git("rev-parse", "--abbrev-ref", "HEAD")
    except (OSError, subprocess.SubprocessError):  # not a repository, or no git: nothing to record
        return {}
    try:
        remote = git("config", "--get", "remote.origin.url")
    except (OSError, subprocess.SubprocessError):
        remote = ""
    return {
        f"{PREFIX}git.commit": commit,
        f"{PREFIX}git.dirty": str(dirty).lower(),
        f"{PREFIX}git.branch": branch,
        f"{PREFIX}git.remote": remote,
    }


def _imported_packages() -> str:
    """name==version of every installed distribution whose top-level module is imported."""
    imported = {name.split(".", 1)[0] for name in list(sys.modules)}
    found: dict[str, str] = {}
    for module, dists in metadata.packages_distributions().items():
        if module in imported:
            for dist in dists:
                try:
                    found[dist] = metadata.version(dist)
                except metadata.PackageNotFoundError:
                    continue
    return ", ".join(f"{name}=={version}" for name, version in sorted(found.items(), key=lambda x: x[0].lower()))
