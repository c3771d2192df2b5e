"""The writer's logged-but-not-yet-spooled calls, kept in shared file mappings inside its spool:
the pages belong to the files, which the kernel keeps whatever becomes of the process, so what a
training thread has logged survives a SIGKILL or an OOM kill from the moment `log` returns, at
the cost of a memory copy per call (no system call).

Two files, `pending.0` and `pending.1`, take turns. Logging calls append to the active one.
When the batcher takes the calls it marks that file BATCHING with the seq of its first batch and
makes the other ACTIVE (whose calls the previous round spooled); once every batch made of the
taken calls is in the spool it marks the file SPOOLED. `runstream sync` of a dead writer makes
the calls of a file not SPOOLED into the batches the batcher would have made, with their seqs
(`unspooled_batches`), and sends those its spool does not hold; the server keeps each seq once.

A file is a 64-byte header, then records, each ending with the file's `mark` (a random number
of the writer and the file's generation, which grows each time the file becomes active):
    header  b"RSPEND\x01\x00", u64 mark, u64 first_seq, u32 batch_points, u32 state
    call    u32 size, u32 keyset id, i64 step, i64 timestamp_ms, f64 value per key, u64 mark
    keyset  u32 size, u32 KEYSET | id, the keys in utf-8 each followed by a NUL, u64 mark
A call is written field by field in order, its mark last, in one copy; a record that does not
end with the mark (cut short by the process's death, or left from an earlier generation) ends
the file. The pages are not fsynced: a power loss may lose what they hold (about a batching
interval's calls). The records carry no checksum (a call costs the training thread one copy):
bytes that are no record are named by sync, but a bit flipped inside a value is not seen.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from runstream.client.calls import Call, encode_calls, split_calls

MAGIC = b"RSPEND\x01\x00"
HEADER = struct.Struct("<8sQQII")  # magic, mark, first_seq, batch_points, state
HEADER_BYTES = 64
RECORD = struct.Struct("<II")  # size, keyset id (KEYSET | id for a keyset's definition)
CALL = struct.Struct("<IIqq")  # a call's record before its values
MARK = struct.Struct("<Q")
KEYSET = 0x8000_0000
SPOOLED, ACTIVE, BATCHING = 0, 1, 2
FILES = ("pending.0", "pending.1")
INITIAL_BYTES = 1 << 20
MAX_SEQ = 2**63  # seqs are PostgreSQL bigints
_packers: dict[int, struct.Struct] = {}
log = logging.getLogger("runstream.client.writer")  # the writer's logger, for all its parts


def _packer(n: int) -> struct.Struct:
    packer = _packers[n] = struct.Struct(f"<IIqq{n}dQ")
    return packer


class _File:
    """One of the two files, mapped."""

    def __init__(self, path: Path, writer_mark: int) -> None:
        self.path = path
        self._handle: IO[bytes] = open(path, "w+b")  # noqa: SIM115 (mapped for the writer's life)
        self.capacity = INITIAL_BYTES
        # Its blocks are taken now: a page written through the mapping that the disk cannot
        # hold would be a SIGBUS in the training thread, not an error.
        os.posix_fallocate(self._handle.fileno(), 0, self.capacity)
        self.map = mmap.mmap(self._handle.fileno(), self.capacity)
        self.used = HEADER_BYTES
        self.first_seq = 0
        self.packers: list[struct.Struct | None] = []  # by keyset: the packer of its calls, once defined here
        self._writer_mark = writer_mark
        self.mark = writer_mark
        self.map[:HEADER_BYTES] = HEADER.pack(MAGIC, self.mark, 0, 0, SPOOLED).ljust(HEADER_BYTES, b"\0")

    def start(self, first_seq: int, batch_points: int) -> None:
        """Make it the active file (its calls were spooled), its batches from `first_seq` on.
        The last generation's records are zeroed, so that a reader finds zeros, or a record
        cut short, where this generation's writing stopped."""
        self.set_state(SPOOLED)
        if self.used > HEADER_BYTES:
            self.map[HEADER_BYTES : self.used] = bytes(self.used - HEADER_BYTES)
        self.mark += 1
        self.map[8:28] = struct.pack("<QQI", self.mark, first_seq, batch_points)
        self.used = HEADER_BYTES
        self.packers = []
        self.set_state(ACTIVE)

    def set_state(self, state: int, first_seq: int | None = None) -> None:
        if first_seq is not None:
            struct.pack_into("<Q", self.map, 16, first_seq)
        struct.pack_into("<I", self.map, 28, state)

    def grow(self, need: int) -> None:
        capacity = self.capacity
        while capacity < need:
            capacity *= 2
        os.posix_fallocate(self._handle.fileno(), 0, capacity)  # OSError, not a SIGBUS, on a full disk
        self.map.resize(capacity)
        self.capacity = capacity

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self.map.close()
        self._handle.close()


class PendingCalls:
    """The pending calls of one live writer, kept in its spool `directory`. Every method is
    called holding the writer's lock."""

    def __init__(self, directory: Path, batch_points: int) -> None:
        self.batch_points = batch_points
        writer_mark = int.from_bytes(os.urandom(4), "little") << 32
        self._files = [_File(directory / name, writer_mark) for name in FILES]
        self._active = self._files[0]
        self._active.start(1, batch_points)
        self._batching: _File | None = None
        self.off = False  # the disk could not hold the files' growth

    def add(self, keyset: int, keys: tuple[str, ...], step: int, timestamp_ms: int, values: list[float]) -> None:
        """One logging call of `keys` (the writer's `keyset` number for them), kept once this
        returns; OverflowError when `step` or the time does not fit in 64 bits (nothing is
        kept then). A disk too full for the files to grow turns keeping off, said once."""
        if self.off:
            return
        f = self._active
        packers = f.packers
        packer = packers[keyset] if keyset < len(packers) else None
        at = f.used
        try:
            if packer is None:
                packer = self._define(f, keyset, keys)
                at = f.used
            end = at + packer.size
            if end > f.capacity:
                f.grow(end)
        except OSError as exc:
            self.off = True
            log.warning(
                "runstream: the spool %s cannot keep points not yet batched any more (%s): "
                "a killed process loses its last flush_interval of them",
                f.path.parent,
                exc,
            )
            return
        try:
            # One copy, written field by field in order: the mark last (see the module's doc).
            packer.pack_into(f.map, at, packer.size, keyset, step, timestamp_ms, *values, f.mark)
        except struct.error as exc:
            raise OverflowError(f"step {step} or timestamp {timestamp_ms} does not fit in 64 bits") from exc
        f.used = end

    def _define(self, f: _File, keyset: int, keys: tuple[str, ...]) -> struct.Struct:
        """Write the keys of `keyset` into the file, before its first call there."""
        text = b"".join(k.encode() + b"\0" for k in keys)
        size = RECORD.size + len(text) + MARK.size
        end = f.used + size
        if end > f.capacity:
            f.grow(end)
        f.map[f.used : end - MARK.size] = RECORD.pack(size, KEYSET | keyset) + text
        MARK.pack_into(f.map, end - MARK.size, f.mark)  # after the rest: see the module's doc
        f.used = end
        f.packers.extend([None] * (keyset + 1 - len(f.packers)))
        packer = f.packers[keyset] = _packers.get(len(keys)) or _packer(len(keys))
        return packer

    def taken(self, first_seq: int) -> None:
        """The batcher took the active file's calls, to be batches from `first_seq` on: that file
        is BATCHING until `spooled`, and the other takes new calls. Its first seq is unknown
        (0: right after the taken file's batches) until `numbered` says how many they are."""
        taken, self._active = self._active, self._files[1] if self._active is self._files[0] else self._files[0]
        taken.set_state(BATCHING, first_seq)
        taken.first_seq = first_seq
        self._active.start(0, self.batch_points)
        self._batching = taken

    def numbered(self, batches: int) -> None:
        """The taken calls make `batches` batches: the active file's come after them."""
        if self._batching is not None:
            self._active.set_state(ACTIVE, self._batching.first_seq + batches)

    def spooled(self) -> None:
        """Every batch of the taken calls is in the spool."""
        if self._batching is not None:
            self._batching.set_state(SPOOLED)
            self._batching = None

    def close(self) -> None:
        for f in self._files:
            f.close()


def unspooled_batches(
    directory: Path, run_id: str, writer_id: str, epoch: int, problems: list[str]
) -> Iterator[tuple[int, bytes]]:
    """(seq, batch) of the batches a dead writer's pending files hold, oldest first: the batches
    its batcher made or would have made of the calls it had not marked spooled. What cannot be
    read (the calls before it are kept) is appended to `problems`."""
    files = [f for f in (_read_file(directory / name, problems) for name in FILES) if f is not None]
    files.sort(key=lambda f: (f[0] == 0, f[0]))  # one of unknown first seq comes after the other
    after = 0  # the seq after the previous file's batches
    for first_seq, batch_points, calls in files:
        parts = list(split_calls(calls, batch_points))
        if first_seq == 0:  # its process died before the batches before it were counted
            if not after:
                problems.append(f"{directory}: {len(calls):,} calls whose batches' seqs are unknown are not sent")
                return
            first_seq = after
        after = first_seq + len(parts)
        for i, part in enumerate(parts):
            if first_seq + i >= MAX_SEQ:
                problems.append(f"{directory}: calls past seq {MAX_SEQ - 1} are not sent")
                return
            yield first_seq + i, encode_calls(run_id, writer_id, first_seq + i, part, epoch)[0]


def is_ours(path: Path) -> bool:
    """A regular file a writer made as one of its pending files (or left empty, dying)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO would wait for a writer
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, len(MAGIC)) in (MAGIC, b"")
    finally:
        os.close(fd)


def _read_file(path: Path, problems: list[str]) -> tuple[int, int, list[Call]] | None:
    """(first seq, batch points, calls) of a pending file not marked spooled, else None (first
    seq 0: right after the other file's batches). What is wrong with it goes to `problems`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO would wait for a writer
    except FileNotFoundError:
        return None
    except OSError as exc:
        problems.append(f"{path} cannot be read ({exc}); left alone")
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # left in place, and named, by the sync
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < HEADER_BYTES:
            if size:
                problems.append(f"{path} is cut short ({size} bytes); left alone")
            return None
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            magic, mark, first_seq, batch_points, state = HEADER.unpack(view[: HEADER.size])
            if magic != MAGIC:  # not ours: left in place, and named, by the sync
                return None
            if state == SPOOLED:
                return None
            if state not in (ACTIVE, BATCHING) or not 0 <= first_seq < MAX_SEQ or batch_points < 1:
                problems.append(
                    f"{path}: its header is out of range (state {state}, first seq {first_seq}, "
                    f"batch points {batch_points}); its calls are not sent"
                )
                return None
            calls, problem = _calls(view, mark)
    if not problem and size < INITIAL_BYTES:  # a writer makes them at least this long
        problem = f"the file is cut short ({size:,} bytes)"
    if problem:
        problems.append(f"{path}: {problem}; the {len(calls):,} calls before it are sent")
    return first_seq, batch_points, calls


def _calls(data: mmap.mmap, mark: int) -> tuple[list[Call], str]:
    """The whole calls of one file's records (up to the first that does not end with `mark`),
    and what stopped the reading early ("" if nothing, or the end of what was written)."""
    calls: list[Call] = []
    keysets: dict[int, tuple[str, ...]] = {}
    pos = HEADER_BYTES
    while len(data) - pos >= RECORD.size + MARK.size:
        size, keyset = RECORD.unpack_from(data, pos)
        end = pos + size
        if size < RECORD.size + MARK.size or end > len(data) or MARK.unpack_from(data, end - MARK.size)[0] != mark:
            if size == 0 or _plausible(size, keyset, keysets):
                break  # where the writing stopped: never written, an earlier generation's, or cut short
            return calls, f"the bytes at {pos} are no record"
        if keyset & KEYSET:
            names = data[pos + RECORD.size : end - MARK.size].split(b"\0")[:-1]
            try:
                keysets[keyset & ~KEYSET] = tuple(n.decode() for n in names)
            except UnicodeDecodeError:
                return calls, f"the keys at byte {pos} are not utf-8"
        else:
            keys = keysets.get(keyset)
            n = (size - CALL.size - MARK.size) // 8
            if keys is None or len(keys) != n or CALL.size + 8 * n + MARK.size != size:
                return calls, f"the call at byte {pos} names keys the file does not define"
            _, _, step, ts = CALL.unpack_from(data, pos)
            values = list(struct.unpack_from(f"<{n}d", data, pos + CALL.size))
            calls.append((keys, step, ts, values))
        pos = end
    return calls, ""


def _plausible(size: int, keyset: int, keysets: dict[int, tuple[str, ...]]) -> bool:
    """A record header a writer could have written (this generation's, cut short, or an
    earlier one's): a keyset's definition, or a call of a keyset whose size fits its keys."""
    if keyset & KEYSET:
        return RECORD.size + MARK.size < size <= 1 << 24
    keys = keysets.get(keyset)
    if keys is not None:
        return size == CALL.size + 8 * len(keys) + MARK.size
    return CALL.size + MARK.size <= size <= 1 << 24 and (size - CALL.size - MARK.size) % 8 == 0
