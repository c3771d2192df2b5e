"""The writer's buffer of logging calls not yet spooled: two buffers that take turns, which are
shared file mappings inside the writer's spool when it has one. The pages belong to the files,
which the kernel keeps whatever becomes of the process, so what a training thread has logged
survives a SIGKILL or an OOM kill from the moment `log` returns. A logging call costs one copy
into the buffer (one struct.pack_into, no system call, no Python object kept per call); the
batcher reads the taken buffer's calls back as numpy columns (`Calls`), and so does `runstream
sync` for a dead writer. Without a spool (or with RUNSTREAM_SPOOL_PENDING=0) the buffers are
plain memory, read the same way.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from runstream.wire import batch as wire

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

I64 = npt.NDArray[np.int64]


def _packer(n: int) -> struct.Struct:
    packer = _packers[n] = struct.Struct(f"<IIqq{n}dQ")
    return packer


@dataclass
class Calls:
    """Logging calls as columns, in the order they were made: per call its keyset, step, time
    and where its values start in `values` (a call's values are consecutive)."""

    keysets: dict[int, tuple[str, ...]]  # keyset id -> its keys
    keyset: I64
    step: I64
    stamp: I64
    starts: I64  # len(calls) + 1 entries: call i's values are values[starts[i]:starts[i + 1]]
    values: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.step)

    def parts(self, limit: int) -> list[tuple[int, int]]:
        """Consecutive calls [a, b) holding at most `limit` points each (a call is never split)."""
        n = len(self)
        lengths = np.diff(self.starts)
        if n and (lengths == lengths[0]).all():  # one keyset (the usual case): parts of equal size
            per = max(1, limit // int(lengths[0])) if lengths[0] else n
            return [(a, min(a + per, n)) for a in range(0, n, per)]
        parts, a, held = [], 0, 0
        for i, length in enumerate(lengths.tolist()):
            if i > a and held + length > limit:
                parts.append((a, i))
                a, held = i, 0
            held += length
        if a < n:
            parts.append((a, n))
        return parts

    def encode(self, run_id: str, writer_id: str, seq: int, a: int, b: int, epoch: int) -> tuple[bytes, int]:
        """The MetricBatch of calls [a, b), and its points."""
        lengths = np.diff(self.starts[a : b + 1])
        values = self.values[self.starts[a] : self.starts[b]]
        kinds = self.keyset[a:b]
        first = int(kinds[0]) if b > a else 0
        if b == a or (kinds == first).all():
            dictionary = list(self.keysets.get(first, ()))
            key_index = np.tile(np.arange(len(dictionary), dtype=np.uint32), b - a)
        else:
            names: dict[str, int] = {}
            index_of = {
                k: np.array([names.setdefault(key, len(names)) for key in self.keysets[k]], dtype=np.uint32)
                for k in dict.fromkeys(kinds.tolist())
            }
            dictionary = list(names)
            key_index = np.concatenate([index_of[k] for k in kinds.tolist()])
        step = np.repeat(self.step[a:b], lengths)
        stamp = np.repeat(self.stamp[a:b], lengths)
        return wire.encode(run_id, writer_id, seq, dictionary, key_index, step, stamp, values, epoch), len(values)


def _no_calls() -> Calls:
    empty = np.empty(0, np.int64)
    return Calls({}, empty, empty, empty, np.zeros(1, np.int64), np.empty(0, np.float64))


class _File:
    """One of the two buffers: a file of the spool, mapped, or (`path` None) plain memory."""

    def __init__(self, path: Path | None, writer_mark: int) -> None:
        self.path = path
        self.capacity = INITIAL_BYTES
        self._handle: IO[bytes] | None = None
        self.map: mmap.mmap | bytearray
        if path is None:
            self.map = bytearray(self.capacity)
        else:
            self._handle = open(path, "w+b")  # noqa: SIM115 (mapped for the writer's life)
            # Its blocks are taken now: a page written through the mapping that the disk cannot
            # hold would be a SIGBUS in the training thread, not an error.
            os.posix_fallocate(self._handle.fileno(), 0, self.capacity)
            self.map = mmap.mmap(self._handle.fileno(), self.capacity)
        self.used = HEADER_BYTES
        self.first_seq = 0
        self.packers: list[struct.Struct | None] = []  # by keyset: the packer of its calls, once defined here
        self.defined: list[int] = []  # the keysets defined here, in order
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
        self.defined = []
        self.set_state(ACTIVE)

    def set_state(self, state: int, first_seq: int | None = None) -> None:
        if first_seq is not None:
            struct.pack_into("<Q", self.map, 16, first_seq)
        struct.pack_into("<I", self.map, 28, state)

    def grow(self, need: int) -> None:
        capacity = self.capacity
        while capacity < need:
            capacity *= 2
        if isinstance(self.map, bytearray):
            self.map.extend(bytes(capacity - self.capacity))
        else:
            assert self._handle is not None
            os.posix_fallocate(self._handle.fileno(), 0, capacity)  # OSError, not a SIGBUS, on a full disk
            self.map.resize(capacity)
        self.capacity = capacity

    def to_memory(self) -> None:
        """Keep the calls in plain memory from now on (the disk is full): the file is marked
        spooled, so that a sync never reads it."""
        if isinstance(self.map, bytearray):
            return
        memory = bytearray(self.map[: self.capacity])
        self.set_state(SPOOLED)
        self.close()
        self.map, self._handle = memory, None

    def calls(self) -> Calls:
        """The calls written so far (all whole: the writer's lock is held, or they were taken)."""
        if len(self.defined) == 1:  # one keyset: its definition, then calls of one size
            keyset = self.defined[0]
            packer = self.packers[keyset]
            assert packer is not None
            size, _ = RECORD.unpack_from(self.map, HEADER_BYTES)
            begin = HEADER_BYTES + size
            n = (packer.size - CALL.size - MARK.size) // 8
            layout = [("head", "<u8"), ("step", "<i8"), ("stamp", "<i8"), ("values", "<f8", (n,)), ("mark", "<u8")]
            count = (self.used - begin) // packer.size
            records = np.frombuffer(self.map, np.dtype(layout), count, begin)
            keys = _keys_at(self.map, HEADER_BYTES, size)
            calls = Calls(
                {keyset: keys},
                np.full(count, keyset, np.int64),
                records["step"].copy(),
                records["stamp"].copy(),
                np.arange(count + 1, dtype=np.int64) * n,
                records["values"].reshape(-1).copy(),
            )
            del records  # no view of the buffer outlives this: it may grow once active again
            return calls
        calls, _ = _walk(self.map, self.used, self.mark)
        return calls

    def close(self) -> None:
        if isinstance(self.map, mmap.mmap):
            with contextlib.suppress(BufferError, ValueError):
                self.map.close()
        if self._handle is not None:
            self._handle.close()


class PendingCalls:
    """The pending calls of one live writer, kept in its spool `directory` (None: in memory).
    Every method is called holding the writer's lock, but `taken_calls`."""

    def __init__(self, directory: Path | None, batch_points: int) -> None:
        self.batch_points = batch_points
        writer_mark = int.from_bytes(os.urandom(4), "little") << 32
        self._files = [_File(None if directory is None else directory / name, writer_mark) for name in FILES]
        self._active = self._files[0]
        self._active.start(1, batch_points)
        self._batching: _File | None = None
        self.off = directory is None  # kept in memory only: a killed process loses them

    def add(self, keyset: int, keys: tuple[str, ...], step: int, timestamp_ms: int, values: Iterable[Any]) -> None:
        """One logging call of `keys` (the writer's `keyset` number for them), kept once this
        returns; OverflowError when `step` or the time does not fit in 64 bits, TypeError when a
        value is no number (nothing is kept then). A disk too full for the files to grow turns
        keeping in them off (the calls stay in memory), said once."""
        f = self._active
        packers = f.packers
        packer = packers[keyset] if keyset < len(packers) else None
        if packer is None:
            packer = self._define(f, keyset, keys)
        at = f.used
        end = at + packer.size
        if end > f.capacity:
            self._grow(f, end)
        try:
            # One copy, written field by field in order: the mark last (see the module's doc).
            packer.pack_into(f.map, at, packer.size, keyset, step, timestamp_ms, *values, f.mark)
        except struct.error:
            # The fields before the bad one were written: zeroed, nothing of the call is left
            # for a later, shorter call to leave behind as bytes that are no record.
            f.map[at:end] = bytes(end - at)
            raise _refusal(keys, step, timestamp_ms, values) from None
        f.used = end

    def _define(self, f: _File, keyset: int, keys: tuple[str, ...]) -> struct.Struct:
        """Write the keys of `keyset` into the file, before its first call there."""
        text = b"".join(k.encode() + b"\0" for k in keys)
        size = RECORD.size + len(text) + MARK.size
        end = f.used + size
        if end > f.capacity:
            self._grow(f, end)
        f.map[f.used : end - MARK.size] = RECORD.pack(size, KEYSET | keyset) + text
        MARK.pack_into(f.map, end - MARK.size, f.mark)  # after the rest: see the module's doc
        f.used = end
        f.packers.extend([None] * (keyset + 1 - len(f.packers)))
        f.defined.append(keyset)
        packer = f.packers[keyset] = _packers.get(len(keys)) or _packer(len(keys))
        return packer

    def _grow(self, f: _File, need: int) -> None:
        try:
            f.grow(need)
        except OSError as exc:
            log.warning(
                "runstream: the spool %s cannot keep points not yet batched any more (%s): "
                "they are kept in memory, and a killed process loses those not yet in the spool",
                f.path.parent if f.path is not None else "",
                exc,
            )
            self.off = True
            for each in self._files:
                each.to_memory()
            f.grow(need)

    def taken(self, first_seq: int) -> None:
        """The batcher took the active file's calls, to be batches from `first_seq` on: that file
        is BATCHING until `spooled`, and the other takes new calls. Its first seq is unknown
        (0: right after the taken file's batches) until `numbered` says how many they are."""
        taken, self._active = self._active, self._files[1] if self._active is self._files[0] else self._files[0]
        taken.set_state(BATCHING, first_seq)
        taken.first_seq = first_seq
        self._active.start(0, self.batch_points)
        self._batching = taken

    def taken_calls(self) -> Calls:
        """The calls of the file `taken` last (by the batcher thread, which alone touches it
        until `spooled`)."""
        return self._batching.calls() if self._batching is not None else _no_calls()

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


def _refusal(keys: tuple[str, ...], step: Any, timestamp_ms: Any, values: Iterable[Any]) -> Exception:
    """Why a call could not be packed, naming what is wrong."""
    for key, value in zip(keys, values, strict=False):
        try:
            struct.pack("<d", value)
        except struct.error:
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            return TypeError(f"metric {key!r}: {shown} is not a number (log ints, floats or numpy numbers)")
    for what, number in (("step", step), ("timestamp_ms", timestamp_ms)):
        if not isinstance(number, int) and not hasattr(number, "__index__"):
            return TypeError(f"{what} {number!r} is not an integer")
    return OverflowError(f"step {step} or timestamp {timestamp_ms} does not fit in 64 bits")


def _keys_at(data: Any, pos: int, size: int) -> tuple[str, ...]:
    return tuple(n.decode() for n in bytes(data[pos + RECORD.size : pos + size - MARK.size]).split(b"\0")[:-1])


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
        parts = calls.parts(batch_points)
        if first_seq == 0:  # its process died before the batches before it were counted
            if not after:
                problems.append(f"{directory}: {len(calls):,} calls whose batches' seqs are unknown are not sent")
                return
            first_seq = after
        after = first_seq + len(parts)
        for i, (a, b) in enumerate(parts):
            if first_seq + i >= MAX_SEQ:
                problems.append(f"{directory}: calls past seq {MAX_SEQ - 1} are not sent")
                return
            yield first_seq + i, calls.encode(run_id, writer_id, first_seq + i, a, b, epoch)[0]


def is_ours(path: Path) -> bool:
    """A regular file a writer made as one of its pending files (or left empty, dying)."""
    fd = _open_file(path)
    if fd is None:
        return False
    try:
        return os.read(fd, len(MAGIC)) in (MAGIC, b"")
    finally:
        os.close(fd)


def _open_file(path: Path) -> int | None:
    """A descriptor of `path` if it is a regular file (None if it is not one), opened without
    waiting on a FIFO; OSError when it cannot be opened (FileNotFoundError: there is none)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO would wait for a writer
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _read_file(path: Path, problems: list[str]) -> tuple[int, int, Calls] | None:
    """(first seq, batch points, calls) of a pending file not marked spooled, else None (first
    seq 0: right after the other file's batches). What is wrong with it goes to `problems`."""
    try:
        fd = _open_file(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        problems.append(f"{path} cannot be read ({exc}); left alone")
        return None
    if fd is None:  # left in place, and named, by the sync
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
            calls, problem = _walk(view, len(view), mark)
    if not problem and size < INITIAL_BYTES:  # a writer makes them at least this long
        problem = f"the file is cut short ({size:,} bytes)"
    if problem:
        problems.append(f"{path}: {problem}; the {len(calls):,} calls before it are sent")
    return first_seq, batch_points, calls


def _walk(data: Any, stop: int, mark: int) -> tuple[Calls, str]:
    """The whole calls of a file's records before `stop` (up to the first that does not end with
    `mark`), and what stopped the reading early ("" if nothing, or the end of what was written).
    A Python step per record: for a dead writer's files, and a live one's of several keysets."""
    keysets: dict[int, tuple[str, ...]] = {}
    kinds: list[int] = []
    steps: list[int] = []
    stamps: list[int] = []
    at: list[int] = []  # where each call's values start in `data`
    lengths: list[int] = []
    problem = ""
    pos = HEADER_BYTES
    while stop - pos >= RECORD.size + MARK.size:
        size, keyset = RECORD.unpack_from(data, pos)
        end = pos + size
        if size < RECORD.size + MARK.size or end > stop or MARK.unpack_from(data, end - MARK.size)[0] != mark:
            if not (size == 0 or _plausible(size, keyset, keysets)):
                problem = f"the bytes at {pos} are no record"
            break  # else where the writing stopped: never written, an earlier generation's, or cut short
        if keyset & KEYSET:
            try:
                keysets[keyset & ~KEYSET] = _keys_at(data, pos, size)
            except UnicodeDecodeError:
                problem = f"the keys at byte {pos} are not utf-8"
                break
        else:
            keys = keysets.get(keyset)
            n = (size - CALL.size - MARK.size) // 8
            if keys is None or len(keys) != n or CALL.size + 8 * n + MARK.size != size:
                problem = f"the call at byte {pos} names keys the file does not define"
                break
            _, _, step, ts = CALL.unpack_from(data, pos)
            kinds.append(keyset)
            steps.append(step)
            stamps.append(ts)
            at.append(pos + CALL.size)
            lengths.append(n)
        pos = end
    starts = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=starts[1:])
    flat = np.frombuffer(data, np.uint8, stop)
    # Each call's values, gathered in one numpy step: byte offsets of every value in `data`.
    offsets = np.repeat(np.asarray(at, np.int64) - starts[:-1] * 8, lengths) + np.arange(int(starts[-1])) * 8
    values = flat[(offsets[:, None] + np.arange(8)).reshape(-1)].view("<f8").copy()
    del flat  # no view of the buffer outlives this
    calls = Calls(
        keysets, np.asarray(kinds, np.int64), np.asarray(steps, np.int64), np.asarray(stamps, np.int64), starts, values
    )
    return calls, problem


def _plausible(size: int, keyset: int, keysets: dict[int, tuple[str, ...]]) -> bool:
    """A record header a writer could have written (this generation's, cut short, or an
    earlier one's): a keyset's definition, or a call of a keyset whose size fits its keys."""
    if keyset & KEYSET:
        return RECORD.size + MARK.size < size <= 1 << 24
    keys = keysets.get(keyset)
    if keys is not None:
        return size == CALL.size + 8 * len(keys) + MARK.size
    return CALL.size + MARK.size <= size <= 1 << 24 and (size - CALL.size - MARK.size) % 8 == 0
