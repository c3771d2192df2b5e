"""An offline run's journal: what a run records besides metrics (its creation, params, tags,
datasets, artifact files, its end), kept in the spool as `<run_id>/run.jsonl`, one JSON object
per line, with the artifact files copied under `<run_id>/files/`. `runstream sync` replays it
against the server in order (client/sync.py); the metrics are in the writers' spools.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from runstream.client import spool

JOURNAL = "run.jsonl"
SYNCED = "run.synced"  # how many journal entries a sync has applied


class Journal:
    """Appends entries to a run's journal; each is flushed to the OS at once, and fsync-ed at
    the run's end (a killed process loses nothing journaled)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        (run_dir / "files").mkdir(parents=True, exist_ok=True)
        self._live = spool.hold_lock(run_dir)  # a sync leaves a live run's spool in place
        self._lock = threading.Lock()
        self._files = sum(1 for _ in (run_dir / "files").iterdir())
        self._handle = open(run_dir / JOURNAL, "a", encoding="utf-8")  # noqa: SIM115 (open for the run's life)

    def record(self, op: str, **fields: Any) -> None:
        line = json.dumps({"op": op, **fields}, separators=(",", ":")) + "\n"
        with self._lock:
            self._handle.write(line)
            self._handle.flush()
            if op == "end":
                os.fsync(self._handle.fileno())

    def keep_file(self, local: Path, artifact_file: str, content_type: str = "") -> None:
        """Copy `local` into the spool now (the training code may change or delete it), to be
        uploaded as `artifact_file` at sync."""
        with self._lock:
            self._files += 1
            kept = Path("files") / f"{self._files:06d}"
        shutil.copyfile(local, self.run_dir / kept)
        self.record("file", file=kept.as_posix(), path=artifact_file, content_type=content_type)

    def keep_text(self, text: str, artifact_file: str, content_type: str) -> None:
        with self._lock:
            self._files += 1
            kept = Path("files") / f"{self._files:06d}"
        (self.run_dir / kept).write_text(text, encoding="utf-8")
        self.record("file", file=kept.as_posix(), path=artifact_file, content_type=content_type)

    def close(self) -> None:
        with self._lock:
            self._handle.close()
            self._live.close()


def create_entry(
    experiment: str, name: str, tags: Mapping[str, str], target: str, start_time_ms: int | None = None
) -> dict[str, Any]:
    return {
        "experiment": experiment,
        "name": name,
        "tags": dict(tags),
        "start_time_ms": start_time_ms or time.time_ns() // 1_000_000,
        "target": target,
    }


def entries(run_dir: Path) -> Iterator[dict[str, Any]]:
    """The journal's whole entries in order (a line torn by a killed process ends it)."""
    try:
        handle = open(run_dir / JOURNAL, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            if not line.endswith("\n"):
                return
            yield json.loads(line)


def synced_count(run_dir: Path) -> int:
    try:
        return int((run_dir / SYNCED).read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def mark_synced(run_dir: Path, count: int) -> None:
    tmp = run_dir / f"{SYNCED}.{os.getpid()}"
    tmp.write_text(str(count))
    tmp.replace(run_dir / SYNCED)
