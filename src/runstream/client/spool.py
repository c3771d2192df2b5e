"""The writer's disk spool: every metric batch is appended to a local file before it is sent,
and the files are trimmed as the server acknowledges them. What the spool still holds when a
process dies (or ends with the server away) is sent later by `runstream sync`, batch by batch
with its original (run, writer, epoch, seq), which the server stores exactly once.

Layout under RUNSTREAM_SPOOL_DIR (default: the user cache directory, ~/.cache/runstream/spool):

    <run_id>/writers/<writer id, %-quoted>.<epoch>/
        lock            flock-ed while the writing process lives (so sync knows it is live)
        meta.json       run_id, writer_id, epoch and the server it was sent to
        acked           the highest seq up to which every batch is acknowledged
        <seq>.seg       records from that seq on: u32 length, u32 crc32, u64 seq, the batch
    <run_id>/run.jsonl  offline runs only: the run's journal (client/offline.py)

Batches are written sequentially from the writer's batcher thread (never the training
thread). Durability (RUNSTREAM_SPOOL_FSYNC):
    interval (default)  fsync every RUNSTREAM_SPOOL_FSYNC_S seconds (2) and at close: a killed
                        process loses nothing batched; a power loss or OS crash at most the
                        last interval's batches
    batch               fsync after every batch: nothing batched is lost even to a power loss,
                        at the cost of one disk flush per batch
    close               fsync only at close: a killed process loses nothing batched; a power
                        loss what the OS had not written back yet
    off                 never fsync
Points logged but not yet batched (at most `flush_interval`, 0.2 s, of them) are in memory
only, whatever the policy. RUNSTREAM_SPOOL=0 turns the spool off for online runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote

log = logging.getLogger(__name__)

HEADER = struct.Struct("<IIQ")  # length, crc32 of the batch, seq
SEGMENT_BYTES = 32 * 1024 * 1024
FSYNC_POLICIES = ("interval", "batch", "close", "off")
_FALSE = ("0", "false", "no", "off")


def enabled() -> bool:
    return os.environ.get("RUNSTREAM_SPOOL", "1").lower() not in _FALSE


def default_dir() -> Path:
    given = os.environ.get("RUNSTREAM_SPOOL_DIR")
    if given:
        return Path(given).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "runstream" / "spool"


def writer_dir(root: Path, run_id: str, writer_id: str, epoch: int) -> Path:
    return root / run_id / "writers" / f"{quote(writer_id, safe='')}.{epoch}"


def fsync_policy() -> tuple[str, float]:
    policy = os.environ.get("RUNSTREAM_SPOOL_FSYNC", "interval").lower()
    if policy not in FSYNC_POLICIES:
        raise ValueError(f"RUNSTREAM_SPOOL_FSYNC is {policy!r}; it must be one of {', '.join(FSYNC_POLICIES)}")
    return policy, float(os.environ.get("RUNSTREAM_SPOOL_FSYNC_S", "2"))


class SpoolBusy(RuntimeError):
    """Another live process holds this writer's spool."""


def hold_lock(directory: Path) -> IO[bytes]:
    """The lock of a live writer (or offline run), held while the returned file is open."""
    handle = open(directory / "lock", "ab")  # noqa: SIM115 (held open for the writer's life)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SpoolBusy(f"the spool {directory} is in use by a live process") from None
    return handle


def is_live(directory: Path) -> bool:
    """True while the process that writes `directory` lives (it holds the lock)."""
    try:
        handle = hold_lock(directory)
    except SpoolBusy:
        return True
    except FileNotFoundError:
        return False
    handle.close()
    return False


def read_acked(directory: Path) -> int:
    try:
        return int((directory / "acked").read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def write_acked(directory: Path, seq: int) -> None:
    """Atomically, and never backwards (the writer and a sync may both record acks)."""
    if seq <= read_acked(directory):
        return
    tmp = directory / f"acked.{os.getpid()}.{threading.get_ident()}"
    with contextlib.suppress(FileNotFoundError):  # the directory was removed: all is acked
        tmp.write_text(str(seq))
        tmp.replace(directory / "acked")


class SpoolWriter:
    """The spool of one writer session: `append` each batch before it is sent, `acked` as the
    acknowledgements come back, `close` at the end (the directory goes once all is acked)."""

    def __init__(self, root: Path, run_id: str, writer_id: str, epoch: int, target: str) -> None:
        self.directory = writer_dir(root, run_id, writer_id, epoch)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.policy, self.fsync_s = fsync_policy()
        self._lock_handle = hold_lock(self.directory)
        meta = {"run_id": run_id, "writer_id": writer_id, "epoch": epoch, "target": target}
        (self.directory / "meta.json").write_text(json.dumps(meta))
        self._mutex = threading.Lock()
        self._segment: IO[bytes] | None = None
        self._segment_bytes = 0
        self._closed_segments: list[tuple[int, Path]] = []  # (last seq, path), oldest first
        self._last_seq = 0
        self._synced_at = time.monotonic()
        self.bytes_written = 0

    def append(self, seq: int, data: bytes) -> None:
        record = HEADER.pack(len(data), zlib.crc32(data), seq) + data
        with self._mutex:
            if self._segment is None or self._segment_bytes >= SEGMENT_BYTES:
                self._rotate(seq)
            assert self._segment is not None
            self._segment.write(record)
            self._segment.flush()  # into the OS: a killed process loses nothing written
            self._segment_bytes += len(record)
            self.bytes_written += len(record)
            self._last_seq = seq
            if self.policy == "batch" or (
                self.policy == "interval" and time.monotonic() - self._synced_at >= self.fsync_s
            ):
                os.fsync(self._segment.fileno())
                self._synced_at = time.monotonic()

    def _rotate(self, first_seq: int) -> None:
        if self._segment is not None:
            self._finish_segment()
            self._closed_segments.append((self._last_seq, Path(self._segment.name)))
            self._segment.close()
        self._segment = open(self.directory / f"{first_seq:020d}.seg", "ab")  # noqa: SIM115
        self._segment_bytes = 0

    def _finish_segment(self) -> None:
        if self._segment is not None and self.policy != "off":
            os.fsync(self._segment.fileno())
            self._synced_at = time.monotonic()

    def acked(self, upto: int) -> None:
        """Every batch up to seq `upto` is acknowledged: drop the segments that hold only those."""
        with self._mutex:
            done = [seg for seg in self._closed_segments if seg[0] <= upto]
            if not done:
                return
            self._closed_segments = self._closed_segments[len(done) :]
            try:
                for _, path in done:
                    path.unlink(missing_ok=True)
                write_acked(self.directory, upto)  # spares a sync resending them (it would be harmless)
            except OSError as exc:
                log.warning("runstream: trimming the spool %s: %s", self.directory, exc)

    def close(self, all_acked: bool, upto: int) -> None:
        """Remove the spool when everything is acknowledged; else keep it (durable) for sync."""
        with self._mutex:
            try:
                if self._segment is not None:
                    self._finish_segment()
                if all_acked:
                    shutil.rmtree(self.directory, ignore_errors=True)
                    remove_empty(self.directory.parent.parent)
                else:
                    write_acked(self.directory, upto)
            except OSError as exc:
                log.error("runstream: closing the spool %s: %s", self.directory, exc)
            finally:
                if self._segment is not None:
                    with contextlib.suppress(OSError):
                        self._segment.close()
                    self._segment = None
                self._lock_handle.close()


def remove_empty(run_dir: Path) -> None:
    """A run's spool directory once no writer and no journal is left in it."""
    with contextlib.suppress(OSError):
        (run_dir / "writers").rmdir()
        run_dir.rmdir()


@dataclass(frozen=True)
class SpooledWriter:
    """A writer session found in a spool."""

    directory: Path
    run_id: str
    writer_id: str
    epoch: int

    @classmethod
    def at(cls, directory: Path) -> SpooledWriter:
        name, _, epoch = directory.name.rpartition(".")
        return cls(directory, directory.parent.parent.name, unquote(name), int(epoch))

    def meta(self) -> dict[str, Any]:
        return dict(json.loads((self.directory / "meta.json").read_text()))

    def records(self, after: int = 0, quiet: bool = False) -> Iterator[tuple[int, bytes]]:
        """(seq, batch) of every whole record with seq > `after`, oldest first. A torn record
        at a segment's end (the process died writing it: never sent; or a live writer is
        writing it: `quiet`) ends that segment."""
        for segment in sorted(self.directory.glob("*.seg")):
            try:
                handle = open(segment, "rb")  # noqa: SIM115
            except FileNotFoundError:  # trimmed by the live writer meanwhile: acknowledged
                continue
            with handle:
                while header := handle.read(HEADER.size):
                    if len(header) < HEADER.size:
                        break
                    length, crc, seq = HEADER.unpack(header)
                    if seq <= after:
                        handle.seek(length, os.SEEK_CUR)
                        continue
                    data = handle.read(length)
                    if len(data) < length or zlib.crc32(data) != crc:
                        if quiet:
                            break
                        log.warning("spool %s: a torn record at seq %d (never sent) is skipped", segment, seq)
                        break
                    yield seq, data


def spooled_writers(root: Path, run_id: str | None = None) -> list[SpooledWriter]:
    runs = [root / run_id] if run_id else sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [SpooledWriter.at(d) for run in runs for d in sorted((run / "writers").glob("*.*")) if d.is_dir()]
