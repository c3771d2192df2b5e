"""The writer's disk spool: every metric batch is appended to a local file before it is sent,
and the files are trimmed as the server acknowledges them. What the spool still holds when a
process dies (or ends with the server away) is sent later by `runstream sync`, batch by batch
with its original (run, writer, epoch, seq), which the server stores exactly once.

Layout under RUNSTREAM_SPOOL_DIR (default: the user cache directory, ~/.cache/runstream/spool):

    <run_id>/writers/<writer id, %-quoted>.<epoch>/
        lock            flock-ed while the writing process lives (so sync knows it is live)
        meta.json       run_id, writer_id, epoch and the server it was sent to
        acked           the highest seq up to which every batch is acknowledged (with a checksum)
        sealed          the last seq spooled, written when the writer closes (with a checksum)
        <seq>.seg       the records from that seq on (below)
    <run_id>/run.jsonl  offline runs only: the run's journal (client/offline.py)
    <run_id>/refused/, <run_id>/corrupt/  what a sync could not send (client/kept.py)

A segment (format 2) starts with the 8 bytes SEGMENT_HEADER, then one record per batch: u32
RECORD_MARK, u32 crc32 of the next 16 bytes, u32 length, u32 crc32 of the batch, u64 seq, the
batch. A reader that meets a bad record (a flipped bit, garbage) looks for the next mark whose
header and batch checksums hold and goes on from there; the bytes in between are reported as a
Damage, never skipped silently. The last record of the last segment cut short (its process died
writing it; it was never sent) is dropped with one log line. Segments of format 1 (no header, no
marks: u32 length, u32 crc32, u64 seq, the batch) are still read; past a bad record in one of
them there is no mark to find, so the rest of that segment is the Damage.

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

import bisect
import contextlib
import fcntl
import json
import logging
import mmap
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote

from runstream.client import pending, settings
from runstream.wire.batch import MAX_BATCH_BYTES

log = logging.getLogger(__name__)

SEGMENT_HEADER = b"RSSPOOL\x02"  # a segment of format 2: records with marks
RECORD_MARK = 0x7E5C0A2F  # 2f 0a 5c 7e: where a record starts, to find the next after a bad one
MARK = struct.Struct("<II")  # RECORD_MARK, crc32 of HEADER's bytes
HEADER = struct.Struct("<IIQ")  # length, crc32 of the batch, seq (format 1's whole record header)
RECORD_HEADER = MARK.size + HEADER.size
_MARK_BYTES = RECORD_MARK.to_bytes(4, "little")
SEGMENT_BYTES = 32 * 1024 * 1024
MIN_SEGMENT_BYTES = 64 * 1024
DROPPED = "dropped"  # "<first seq> <last seq> <points>" per span a full spool dropped (on_full="drop")


def enabled() -> bool:
    return settings.current().spool


def default_dir() -> Path:
    return settings.current().spool_dir.expanduser()


def writer_dir(root: Path, run_id: str, writer_id: str, epoch: int) -> Path:
    return root / run_id / "writers" / f"{quote(writer_id, safe='')}.{epoch}"


def fsync_policy() -> tuple[str, float]:
    given = settings.current()
    return given.spool_fsync, given.spool_fsync_s


def read_dropped(directory: Path) -> list[tuple[int, int, int]]:
    """(first seq, last seq, points) of each span a full spool dropped; lines that do not read
    as three numbers are skipped (a process killed while writing one)."""
    try:
        lines = (directory / DROPPED).read_text(encoding="ascii", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    spans = []
    for line in lines:
        words = line.split()
        if len(words) == 3 and all(w.isdigit() for w in words):
            spans.append((int(words[0]), int(words[1]), int(words[2])))
    return spans


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


@dataclass(frozen=True)
class Count:
    """A number kept in a small file of the spool (`acked`, `sealed`, a journal's `run.synced`)
    as "<n> <crc32 of n>": `value` is n when the checksum holds (0 when the file is missing);
    otherwise 0, with `claimed` the number it seems to say (None if none) and `problem` why it
    is not believed. Nothing is skipped or deleted on the word of a file that is not believed."""

    value: int
    claimed: int | None = None
    problem: str = ""


def read_count(path: Path) -> Count:
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return Count(0)
    words = text.split()
    number = int(words[0]) if words and words[0].isdigit() else None
    if number is None:
        return Count(0, None, f"{path} does not hold a number ({text[:40]!r})")
    if len(words) == 2 and words[1] == _crc(number):
        return Count(number, number)
    if len(words) == 1:
        return Count(0, number, f"{path} says {number} without a checksum")
    return Count(0, number, f"{path} says {number} but its checksum does not hold")


def write_count(path: Path, number: int) -> None:
    """Atomically (a temporary file beside it, then renamed)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(f"{number} {_crc(number)}\n", encoding="ascii")
    tmp.replace(path)


def _crc(number: int) -> str:
    return f"{zlib.crc32(str(number).encode()):08x}"


def read_acked(directory: Path) -> Count:
    return read_count(directory / "acked")


def write_acked(directory: Path, seq: int) -> None:
    """Never backwards (the writer and a sync may both record acks), but over one not believed."""
    if seq <= read_acked(directory).value:
        return
    with contextlib.suppress(FileNotFoundError):  # the directory was removed: all is acked
        write_count(directory / "acked", seq)


def read_sealed(directory: Path) -> int | None:
    """The last seq a writer that closed spooled (None: it did not close, or `sealed` is not believed)."""
    sealed = read_count(directory / "sealed")
    return None if sealed.claimed is None or sealed.problem else sealed.value


@dataclass
class _Closed:
    """A segment the writer no longer appends to."""

    path: Path
    first: int  # seq
    last: int
    points: int
    size: int


class SpoolWriter:
    """The spool of one writer session: `append` each batch before it is sent, `acked` as the
    acknowledgements come back, `close` at the end (the directory goes once all is acked).

    It holds at most `max_bytes` (RUNSTREAM_SPOOL_MAX_BYTES) of segments: when a batch would
    pass that, `append` waits for acknowledgements to trim the oldest segments (`on_full`
    "block": the batcher stops, the writer's buffer fills and logging calls block as the
    writer's on_full says), or removes the oldest segments, whose batches are then never sent,
    and tells `on_drop` and the file `dropped` ("drop")."""

    def __init__(self, root: Path, run_id: str, writer_id: str, epoch: int, target: str) -> None:
        self.directory = writer_dir(root, run_id, writer_id, epoch)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.policy, self.fsync_s = fsync_policy()
        self._lock_handle = hold_lock(self.directory)
        meta = {"run_id": run_id, "writer_id": writer_id, "epoch": epoch, "target": target}
        (self.directory / "meta.json").write_text(json.dumps(meta))
        self._mutex = threading.Lock()
        self._room = threading.Condition(self._mutex)  # trimmed segments free room for a waiting append
        self.max_bytes = settings.current().spool_max_bytes or shutil.disk_usage(self.directory).free // 10
        self.segment_bytes = max(MIN_SEGMENT_BYTES, min(SEGMENT_BYTES, self.max_bytes // 8))
        self.on_full = "block"
        self._on_drop: Callable[[int, int, int], int] | None = None
        self._sending_stopped: Callable[[], bool] = lambda: True
        self._stop_waiting = False
        self._segment: IO[bytes] | None = None
        self._segment_bytes = 0
        self._segment_first = 0
        self._segment_points = 0
        self._closed_segments: list[_Closed] = []  # oldest first
        self.held_bytes = 0  # of every segment on disk
        self._last_seq = 0
        self._synced_at = time.monotonic()
        self.bytes_written = 0

    def bound(self, on_full: str, on_drop: Callable[[int, int, int], int], sending_stopped: Callable[[], bool]) -> None:
        """What a full spool does: the writer's `on_full` policy. With "drop", while
        `sending_stopped()` the oldest batches go, and `on_drop` is told (first seq, last seq,
        points) and answers how many of those points were not acknowledged."""
        self.on_full, self._on_drop, self._sending_stopped = on_full, on_drop, sending_stopped

    def stop_waiting(self) -> None:
        """The writer closes: a waiting append writes past the limit rather than lose its batch."""
        with self._room:
            self._stop_waiting = True
            self._room.notify_all()

    def append(self, seq: int, data: bytes, points: int = 0) -> None:
        header = HEADER.pack(len(data), zlib.crc32(data), seq)
        record = MARK.pack(RECORD_MARK, zlib.crc32(header)) + header + data
        with self._room:
            while self.held_bytes + len(record) > self.max_bytes and self._closed_segments and not self._stop_waiting:
                # Only batches that cannot be sent now are dropped: while the server takes them,
                # the acknowledgements trim the spool soon enough.
                if self.on_full == "drop" and self._sending_stopped():
                    self._drop_oldest()
                else:
                    self._room.wait(1.0)
            if self._segment is None or self._segment_bytes >= self.segment_bytes:
                self._rotate(seq)
            assert self._segment is not None
            self._segment.write(record)
            self._segment.flush()  # into the OS: a killed process loses nothing written
            self._segment_bytes += len(record)
            self._segment_points += points
            self.held_bytes += len(record)
            self.bytes_written += len(record)
            self._last_seq = seq
            if self.policy == "batch" or (
                self.policy == "interval" and time.monotonic() - self._synced_at >= self.fsync_s
            ):
                os.fsync(self._segment.fileno())
                self._synced_at = time.monotonic()

    def _drop_oldest(self) -> None:
        """Called holding the mutex: remove the oldest segment, its batches never to be sent.
        Said in `dropped` before it goes, so a sync never sends what was counted dropped."""
        gone = self._closed_segments.pop(0)
        points = gone.points if self._on_drop is None else self._on_drop(gone.first, gone.last, gone.points)
        with open(self.directory / DROPPED, "a", encoding="ascii") as out:
            out.write(f"{gone.first} {gone.last} {points}\n")
        gone.path.unlink(missing_ok=True)
        self.held_bytes -= gone.size

    def _rotate(self, first_seq: int) -> None:
        if self._segment is not None:
            self._finish_segment()
            self._closed_segments.append(
                _Closed(
                    Path(self._segment.name),
                    self._segment_first,
                    self._last_seq,
                    self._segment_points,
                    self._segment_bytes,
                )
            )
            self._segment.close()
        self._segment = open(self.directory / f"{first_seq:020d}.seg", "ab")  # noqa: SIM115
        self._segment.write(SEGMENT_HEADER)
        self._segment_bytes = len(SEGMENT_HEADER)
        self._segment_first = first_seq
        self._segment_points = 0
        self.held_bytes += len(SEGMENT_HEADER)

    def _finish_segment(self) -> None:
        if self._segment is not None and self.policy != "off":
            os.fsync(self._segment.fileno())
            self._synced_at = time.monotonic()

    def acked(self, upto: int) -> None:
        """Every batch up to seq `upto` is acknowledged: drop the segments that hold only those."""
        with self._room:
            done = [seg for seg in self._closed_segments if seg.last <= upto]
            if not done:
                return
            self._closed_segments = self._closed_segments[len(done) :]
            self.held_bytes -= sum(seg.size for seg in done)
            self._room.notify_all()
            try:
                for seg in done:
                    seg.path.unlink(missing_ok=True)
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
                    write_count(self.directory / "sealed", self._last_seq)  # a sync can tell a lost tail
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
        """The writer session of `directory`; ValueError when its name is not "<writer>.<epoch>"."""
        name, _, epoch = directory.name.rpartition(".")
        if not name or not epoch.isdigit():
            raise ValueError(f"{directory.name!r} is not the name of a writer's spool (<writer>.<epoch>)")
        return cls(directory, directory.parent.parent.name, unquote(name), int(epoch))

    def meta(self) -> dict[str, Any]:
        return dict(json.loads((self.directory / "meta.json").read_text()))

    def segments(self) -> list[Path]:
        """Its segment files, oldest first (named by the seq they start at)."""
        return sorted(p for p in self.directory.glob("*.seg") if p.stem.isdigit())

    def records(
        self,
        after: int = 0,
        quiet: bool = False,
        damaged: list[Damage] | None = None,
        unspooled: list[str] | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        """(seq, batch) of every readable record with seq > `after`, oldest first. Unreadable
        bytes followed by readable records (or not a cut-short last record) are appended to
        `damaged` as they are met, or logged as errors without it. The last record of the last
        segment cut short is dropped: its process died writing it (one warning), or a live
        writer is writing it (`quiet`: no word). With `unspooled` (the writer's process is dead),
        then the batches of the calls it had logged but not spooled (client/pending.py), with
        what could not be read of them appended to `unspooled`."""
        segments = self.segments()
        seen: set[int] = set()
        dropped = Spans([(first, last) for first, last, _ in read_dropped(self.directory)])
        for index, segment in enumerate(segments):
            found: list[Damage] = [] if damaged is None else damaged
            for seq, data in _segment_records(segment, after, index == len(segments) - 1, quiet, found):
                seen.add(seq)
                if seq not in dropped:  # counted as dropped: its segment was going when its process died
                    yield seq, data
            if damaged is None:
                for d in found:
                    log.error("spool %s: bytes %d-%d are unreadable (%s); skipped", segment, d.start, d.end, d.reason)
        if unspooled is not None:
            batches = pending.unspooled_batches(self.directory, self.run_id, self.writer_id, self.epoch, unspooled)
            for seq, data in batches:
                if seq > after and seq not in seen and seq not in dropped:
                    yield seq, data

    def remove_sent(self, segments: list[Path]) -> list[Path]:
        """Remove the files of a dead writer's spool that a sync has sent (`segments`) or knows
        (its lock, meta, acked, sealed and their temporary files); what else is in it is left,
        and returned."""
        known = {"lock", "meta.json", "acked", "sealed", DROPPED}
        for path in segments:
            path.unlink(missing_ok=True)
        for path in self.directory.iterdir():
            name, _, tmp = path.name.partition(".")
            ours = path.name in pending.FILES and pending.is_ours(path)  # else named, not deleted
            if ours or path.name in known or (name in ("acked", "sealed") and tmp.replace(".", "").isdigit()):
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # something else is in it
            self.directory.rmdir()
            return []
        return sorted(self.directory.iterdir())


class Spans:
    """Inclusive spans of seqs (e.g. those counted dropped): `seq in spans`, and what of other
    spans lies outside them."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        self._spans = sorted(spans)
        self._firsts = [first for first, _ in self._spans]

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self._firsts, seq) - 1
        return i >= 0 and seq <= self._spans[i][1]

    def outside(self, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The seqs of `spans` outside every span here, as spans."""
        for cut_first, cut_last in self._spans:
            left: list[tuple[int, int]] = []
            for first, last in spans:
                if first < cut_first:
                    left.append((first, min(last, cut_first - 1)))
                if last > cut_last:
                    left.append((max(first, cut_last + 1), last))
            spans = left
        return spans


@dataclass(frozen=True)
class Damage:
    """Bytes `start` to `end` of a segment that hold no readable record."""

    segment: Path
    start: int
    end: int
    reason: str


def _segment_records(
    path: Path, after: int, last: bool, quiet: bool, damaged: list[Damage]
) -> Iterator[tuple[int, bytes]]:
    try:
        handle = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:  # trimmed by the live writer meanwhile: acknowledged
        return
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:  # its first record was not written yet
            return
        with mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ) as view:
            segment = _Segment(path, view, last, quiet, damaged)
            if view[: len(SEGMENT_HEADER)] == SEGMENT_HEADER:
                yield from segment.marked(len(SEGMENT_HEADER), after)
            elif last and SEGMENT_HEADER.startswith(view[:size]):  # its header cut short: no record yet
                return
            elif _format1_record(view, 0):
                yield from segment.format1(after)
            else:  # format 2 with a damaged segment header: read on from the first good record
                yield from segment.marked(0, after)


def _format1_record(view: mmap.mmap, pos: int) -> bool:
    """A whole format-1 record (its batch checksum holds) at `pos`."""
    if len(view) - pos < HEADER.size:
        return False
    length, crc, _ = HEADER.unpack_from(view, pos)
    end = pos + HEADER.size + length
    return end <= len(view) and zlib.crc32(view[pos + HEADER.size : end]) == int(crc)


class _Segment:
    """Reading the records of one mapped segment."""

    def __init__(self, path: Path, view: mmap.mmap, last: bool, quiet: bool, damaged: list[Damage]) -> None:
        self.path, self.view, self.size = path, view, len(view)
        self.last, self.quiet, self.damaged = last, quiet, damaged

    def marked(self, pos: int, after: int) -> Iterator[tuple[int, bytes]]:
        """Format 2, from `pos`: past a bad record, on from the next good one."""
        while pos < self.size:
            header = self._header_at(pos)
            if isinstance(header, tuple):
                length, crc, seq = header
                start, end = pos + RECORD_HEADER, pos + RECORD_HEADER + length
                if end <= self.size:
                    if seq <= after:  # acknowledged: its batch need not be read
                        pos = end
                        continue
                    data = self.view[start:end]
                    if zlib.crc32(data) == crc:
                        yield seq, data
                        pos = end
                        continue
                    header = f"bad batch checksum (seq {seq})"
                elif self._torn(pos, f"seq {seq}"):
                    return
                else:
                    header = f"record of seq {seq} runs past the segment's end"
            elif header == "" and self._torn(pos, "its header"):
                return
            following = self._next_record(pos + 1)
            self.damaged.append(Damage(self.path, pos, following, header or "cut short"))
            pos = following

    def format1(self, after: int) -> Iterator[tuple[int, bytes]]:
        """Format 1: no marks, so nothing after a bad record can be found."""
        pos = 0
        while pos < self.size:
            if self.size - pos < HEADER.size:
                if self._torn(pos, "its header"):
                    return
                reason = "cut short"
            else:
                length, crc, seq = HEADER.unpack_from(self.view, pos)
                start, end = pos + HEADER.size, pos + HEADER.size + length
                if end <= self.size:
                    if seq <= after:
                        pos = end
                        continue
                    data = self.view[start:end]
                    if zlib.crc32(data) == crc:
                        yield seq, data
                        pos = end
                        continue
                if end > self.size and length <= MAX_BATCH_BYTES and self._torn(pos, f"seq {seq}"):
                    return
                reason = "bad record in a segment of format 1, which has no marks to find the next record by"
            self.damaged.append(Damage(self.path, pos, self.size, reason))
            return

    def _header_at(self, pos: int) -> tuple[int, int, int] | str:
        """(length, batch crc, seq) of the record header at `pos`, or why there is none there
        ("": fewer bytes than a header left)."""
        if self.size - pos < RECORD_HEADER:
            return "" if _MARK_BYTES.startswith(self.view[pos : pos + 4]) else "no record mark"
        mark, header_crc = MARK.unpack_from(self.view, pos)
        if mark != RECORD_MARK:
            return "no record mark"
        if zlib.crc32(self.view[pos + MARK.size : pos + RECORD_HEADER]) != header_crc:
            return "bad record header checksum"
        length, crc, seq = HEADER.unpack_from(self.view, pos + MARK.size)
        return length, crc, seq

    def _next_record(self, pos: int) -> int:
        """Where the next whole, good record starts at or after `pos` (the segment's end if none)."""
        while (pos := self.view.find(_MARK_BYTES, pos)) != -1:
            header = self._header_at(pos)
            if isinstance(header, tuple):
                length, crc, _ = header
                end = pos + RECORD_HEADER + length
                if end <= self.size and zlib.crc32(self.view[pos + RECORD_HEADER : end]) == crc:
                    return pos
            pos += 1
        return self.size

    def _torn(self, pos: int, what: str) -> bool:
        """True when the record at `pos` is the last segment's last, cut short by the writing
        process's death (or being written by a live one): nothing else follows it."""
        if not self.last:
            return False
        if not self.quiet:
            log.warning(
                "spool %s: the last record (%s, from byte %d) is torn: its process died writing it, "
                "so it was never sent; dropped",
                self.path,
                what,
                pos,
            )
        return True


def spooled_writers(root: Path, run_id: str | None = None) -> list[SpooledWriter]:
    """The writer sessions in the spool at `root` (or of one run); what else is under a run's
    `writers/` is left alone (`strangers`)."""
    runs = [root / run_id] if run_id else sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    found = []
    for run in runs:
        for d in sorted((run / "writers").glob("*")):
            if d.is_dir():
                with contextlib.suppress(ValueError):  # not a writer's spool
                    found.append(SpooledWriter.at(d))
    return found


def strangers(run_dir: Path) -> list[Path]:
    """What is under a run's `writers/` but no writer's spool (renamed, or put there by hand)."""
    writers = {w.directory for w in spooled_writers(run_dir.parent, run_dir.name)}
    return sorted(p for p in (run_dir / "writers").glob("*") if p not in writers)
