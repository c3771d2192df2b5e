"""An offline run's journal: what a run records besides metrics (its creation, params, tags,
datasets, artifact files, its end), kept in the spool as `<run_id>/run.jsonl`, one JSON object
per line, with the artifact files copied under `<run_id>/files/`. `runstream sync` replays it
against the server in order (client/sync.py); the metrics are in the writers' spools.
`<run_id>/run.synced` counts the entries a sync has applied (with a checksum; one not believed
counts 0, and every entry is applied again: they are idempotent).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runstream.client import spool
from runstream.wire.proto import tracking_pb2 as pb
from runstream.wire.status import RUN_STATUS_VALUES

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


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strings(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _status(value: Any) -> bool:
    return isinstance(value, str) and value in RUN_STATUS_VALUES


def _inputs(value: Any) -> bool:
    fields = pb.DatasetInput.DESCRIPTOR.fields_by_name
    return isinstance(value, list) and all(_strings(i) and all(k in fields for k in i) for i in value)


# The fields of each entry and what each must hold: an entry without them cannot be applied.
FIELDS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "create": {"experiment": _text, "name": _text, "tags": _strings, "start_time_ms": _number},
    "params": {"params": _strings},
    "tags": {"tags": _strings},
    "delete_tag": {"key": _text},
    "inputs": {"inputs": _inputs},
    "file": {"file": _text, "path": _text, "content_type": _text},
    "end": {"status": _status, "end_time_ms": _number},
}


@dataclass(frozen=True)
class Line:
    """One whole line of a journal: its entry, or why it cannot be applied (`problem`)."""

    number: int  # from 1
    text: bytes
    entry: dict[str, Any]  # {} when unreadable
    problem: str = ""

    @property
    def op(self) -> str:
        return str(self.entry.get("op", ""))


def lines(run_dir: Path) -> list[Line]:
    """The journal's whole lines in order (a line torn by a killed process, or being written,
    ends it), each read and checked: a line that cannot be applied is one with a `problem`,
    never an exception."""
    try:
        raw = (run_dir / JOURNAL).read_bytes()
    except FileNotFoundError:
        return []
    return [_line(number, text) for number, text in enumerate(raw.split(b"\n")[:-1], 1)]


def _line(number: int, text: bytes) -> Line:
    try:
        entry = json.loads(text)
    except ValueError as exc:  # not JSON, or not UTF-8
        return Line(number, text, {}, f"is not a journal entry ({exc})")
    if not isinstance(entry, dict):
        return Line(number, text, {}, "is not a journal entry (not a JSON object)")
    op = entry.get("op")
    fields = FIELDS.get(op) if isinstance(op, str) else None
    if fields is None:
        return Line(number, text, entry, f"is an entry sync does not know (op {entry.get('op')!r})")
    missing = [f for f, valid in fields.items() if f not in entry or not valid(entry[f])]
    if missing:
        return Line(number, text, entry, f"is a {entry['op']} entry without a valid {', '.join(missing)}")
    return Line(number, text, entry)


def artifact_copy(run_dir: Path, line: Line) -> tuple[Path | None, str]:
    """The spool's copy of a file entry's artifact, or why there is none."""
    name = Path(str(line.entry.get("file", "")))
    if name.parts[:1] != ("files",) or len(name.parts) != 2:
        return None, f"names {name}, which is not a copy under files/"
    if not (run_dir / name).is_file():
        return None, f"names its artifact's copy {name}, which is missing"
    return run_dir / name, ""


def synced_count(run_dir: Path, lines: int) -> tuple[int, str]:
    """How many of the journal's `lines` earlier syncs applied, and why `run.synced` is not
    believed ("" when it is; the count is 0 then)."""
    count = spool.read_count(run_dir / SYNCED)
    if count.problem:
        return 0, count.problem
    if count.value > lines:
        return 0, f"{run_dir / SYNCED} says {count.value} entries were applied, but the journal has {lines}"
    return count.value, ""


def mark_synced(run_dir: Path, count: int) -> None:
    spool.write_count(run_dir / SYNCED, count)
