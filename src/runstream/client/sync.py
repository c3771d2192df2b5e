"""Sending what a spool holds (`runstream sync`, auto mode's follower, and the SDK's offer at
start-up): offline runs are created under their client-made id and their journal replayed;
every writer's spooled batches are streamed as they are, with their original (run, writer,
epoch, seq), so the server stores each exactly once however often a sync runs or is cut short.

A sync may run while the job still writes: it sends what is there and leaves the files of a
live writer to it. A batch the server refuses for good, the bytes of a spool segment that hold
no readable record, and a journal line that cannot be applied are copied under the run's
directory (client/kept.py), reported one line each, and do not hold up the rest; seqs missing
from a writer's spool are reported and noted there too. A sent run's spool is then removed:
the files sync knows it has sent, never one it does not know (those are named), nor what is
kept; each later sync offers the refused batches again and reports what is still kept. A run
that cannot be synced at all is reported naming the file, and the other runs go on.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from runstream.client import kept, offline, settings, spool
from runstream.client.sender import RETRYABLE, STATUS_BY_CODE
from runstream.errors import (
    DeadlineExceeded,
    NotFound,
    ResourceExhausted,
    RunstreamError,
    Unavailable,
    from_status,
)
from runstream.wire.proto import tracking_pb2 as pb


class Client(Protocol):
    """What a sync needs of runstream.client.tracking.Client (named here, not imported: the
    client imports this module)."""

    target: str

    @property
    def channel(self) -> grpc.Channel: ...
    @property
    def artifacts(self) -> Any: ...
    def get_run(self, run_id: str, *, all_metrics: bool = ...) -> pb.Run: ...
    def create_run(
        self,
        experiment: str = ...,
        name: str = ...,
        tags: Any = ...,
        start_time_ms: int = ...,
        *,
        run_id: str = ...,
        timeout: float | None = ...,
    ) -> pb.Run: ...
    def log_params(self, run_id: str, params: Any) -> None: ...
    def set_tags(self, run_id: str, tags: Any) -> None: ...
    def delete_tag(self, run_id: str, key: str) -> None: ...
    def log_inputs(self, run_id: str, inputs: list[Any]) -> None: ...
    def update_run(
        self, run_id: str, status: str | None = ..., name: str | None = ..., end_time_ms: int = ...
    ) -> Any: ...


log = logging.getLogger(__name__)

Progress = Callable[[int], None]  # points acknowledged so far in this sync
TRANSIENT = (Unavailable, DeadlineExceeded, ResourceExhausted)  # the server away or busy: later, all runs


class RunFailed(RunstreamError):
    """A run that cannot be synced now; the message names the file that says why."""


@dataclass
class WriterSync:
    writer_id: str
    epoch: int
    batches: int = 0
    points: int = 0
    refused: int = 0
    unreadable: int = 0  # spans of its spool that hold no readable record
    dropped: int = 0  # points its process dropped because its spool was full (on_full="drop")
    live: bool = False  # its process still writes: its files are left to it
    retried: bool = False  # batches refused by an earlier sync, offered again
    last: int = 0  # the highest seq the server answered in this sync


@dataclass
class RunSync:
    run_id: str
    created: bool = False  # an offline run made on the server by this sync
    entries: int = 0  # journal entries applied
    writers: list[WriterSync] = field(default_factory=list)
    done: bool = False  # everything sent and the spool removed, but for what is kept
    busy: bool = False  # another sync holds this run
    failed: str = ""  # why this run could not be synced (its spool is left for the next sync)
    problems: list[str] = field(default_factory=list)  # what is kept, skipped or left, one line each

    @property
    def points(self) -> int:
        return sum(w.points for w in self.writers)

    @property
    def state(self) -> str:
        if self.busy:
            return "busy (another sync)"
        if self.failed:
            return "failed (see stderr)"
        if not self.done:
            return "partly (live)"
        return "kept (see stderr)" if self.problems else "done"


def sync(client: Client, root: Path, run_id: str | None = None, progress: Progress | None = None) -> list[RunSync]:
    """Send every run of the spool at `root` (or just `run_id`), each on its own: one that
    fails is reported and the others go on. Only the server being away stops them all."""
    counter = _Counter(progress)
    runs = [root / run_id] if run_id else sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [_sync_alone(client, run_dir, counter) for run_dir in runs if run_dir.is_dir()]


def _sync_alone(client: Client, run_dir: Path, counter: _Counter) -> RunSync:
    """sync_run, with whatever stops this run (but the server being away) reported as its
    failure, its spool left in place for the next sync."""
    result = RunSync(run_dir.name)
    try:
        return sync_run(client, run_dir, counter, result)
    except TRANSIENT:
        raise
    except Exception as exc:  # one run's trouble, whatever it is, must not stop the others
        log.debug("runstream: syncing run %s", run_dir.name, exc_info=True)
        result.failed = str(exc) if isinstance(exc, RunFailed) else f"{type(exc).__name__}: {exc}"
        result.problems.append(f"run {run_dir.name}: not synced: {result.failed}; its spool stays in {run_dir}")
        with contextlib.suppress(OSError):
            result.problems += kept.report(run_dir)
        return result


def sync_run(client: Client, run_dir: Path, counter: _Counter | None = None, result: RunSync | None = None) -> RunSync:
    """Send one run's spool: its journal (offline runs) and its writers' batches."""
    counter = counter or _Counter(None)
    result = result or RunSync(run_dir.name)
    with _run_lock(run_dir) as held:
        if not held:
            result.busy = True
            return result
        result.problems += [
            f"run {run_dir.name}: {p} is not a writer's spool (<writer>.<epoch>); left alone"
            for p in spool.strangers(run_dir)
        ]
        # Liveness before the journal is read: a process that ends while it is read records its
        # end after what was read, and must not be taken for one that died without ending.
        has_journal = (run_dir / offline.JOURNAL).exists()
        journal_live = has_journal and spool.is_live(run_dir)
        journal = _replay(client, run_dir, result, counter)
        live = any(w.live for w in result.writers) or journal_live
        abandoned = not live and has_journal and not journal.ended and journal.all_applied
        if abandoned:  # its process died before ending it: what W&B calls crashed
            client.update_run(run_dir.name, status="CRASHED")
        if not live and (journal.ended or not has_journal or abandoned):
            result.problems += _remove(run_dir, journal.files)
            result.done = True
        result.problems += kept.report(run_dir)
    return result


def _remove(run_dir: Path, files: list[Path]) -> list[str]:
    """A sent run's spool: the files sync knows and has sent (the journal, its bookkeeping, the
    artifact copies the server has; each writer's spool went with its batches). What is kept
    (client/kept.py) stays for a person to read; anything else is left, and named."""
    for path in files:
        path.unlink(missing_ok=True)
    for name in (offline.JOURNAL, offline.SYNCED, "lock", "sync.lock"):
        (run_dir / name).unlink(missing_ok=True)
    for tmp in run_dir.glob(f"{offline.SYNCED}.*"):
        if tmp.name.split(".", 2)[-1].replace(".", "").isdigit():  # mark_synced's, cut short
            tmp.unlink(missing_ok=True)
    left: list[Path] = []
    for entry in sorted(run_dir.iterdir()):
        if entry.name in (kept.REFUSED, kept.CORRUPT, "writers"):
            continue  # reported by kept.report, and writer by writer
        with contextlib.suppress(OSError):
            entry.rmdir()  # files/, once empty
            continue
        left += sorted(entry.iterdir()) if entry.name == "files" and entry.is_dir() else [entry]
    for directory in (run_dir / "writers", run_dir):
        with contextlib.suppress(OSError):  # something is left in it
            directory.rmdir()
    return [f"run {run_dir.name}: {p} is nothing sync sent or knows; left in place" for p in left]


@dataclass
class _Journal:
    """What replaying an offline run's journal came to."""

    ended: bool = False  # the run's end is on the server (and no writer of it lives)
    all_applied: bool = False  # every line applied, or kept as one that cannot be
    files: list[Path] = field(default_factory=list)  # artifact copies the server has


def _replay(client: Client, run_dir: Path, result: RunSync, counter: _Counter) -> _Journal:
    """Apply the journal's new entries (a line that cannot be applied is kept and named, and
    the entries after it go on), sending the writers before the run's end."""
    out = _Journal()
    lines = offline.lines(run_dir)
    done = _applied_before(client, run_dir, len(lines))
    if lines and done == 0 and lines[0].problem:
        raise RunFailed(
            f"line 1 of {run_dir / offline.JOURNAL}, the run's create entry, {lines[0].problem}: the run cannot "
            "be created on the server; mend that line and sync again"
        )
    end: offline.Line | None = None
    for line in lines:
        copy, missing = offline.artifact_copy(run_dir, line) if line.op == "file" else (None, "")
        if line.number <= done:  # applied by an earlier sync
            out.ended |= line.op == "end" and not line.problem
            out.files += [copy] if copy is not None and not line.problem else []
            continue
        if line.problem or missing:
            kept.keep_entry(run_dir, line.number, line.text, line.problem or missing)
        elif line.op == "end":
            end = line
            break
        else:
            result.created |= _apply(client, run_dir, line)
            out.files += [copy] if copy is not None else []
            result.entries += 1
        offline.mark_synced(run_dir, line.number)
    else:
        out.all_applied = True
    result.writers = _retry_refused(client, run_dir, counter)  # before new refusals join them
    for w in spool.spooled_writers(run_dir.parent, run_dir.name):
        result.writers.append(_send_writer(client, w, counter, result.problems))
    if end is not None:
        _apply(client, run_dir, end)
        offline.mark_synced(run_dir, end.number)
        result.entries += 1
        out.ended = True
    out.ended &= all(not w.live for w in result.writers)
    return out


def _applied_before(client: Client, run_dir: Path, lines: int) -> int:
    """How many journal lines earlier syncs applied: 0 when `run.synced` is not believed (it
    does not parse, or says more than the journal holds, or the run is not on the server), and
    said: every entry is then applied again, which is harmless (each is idempotent)."""
    done, why = offline.synced_count(run_dir, lines)
    if done:
        try:
            client.get_run(run_dir.name, all_metrics=False)
        except NotFound:
            why = f"{run_dir / offline.SYNCED} says {done} entries were applied, but the run is not on the server"
            done = 0
    if why:
        log.warning("runstream: run %s: %s; every entry of its journal is applied again", run_dir.name, why)
    return done


def _apply(client: Client, run_dir: Path, line: offline.Line) -> bool:
    """Apply one checked journal entry; True when it created the run. What the server refuses
    for good stops the run here (the next sync begins again at this entry)."""
    try:
        return _apply_entry(client, run_dir, line.entry)
    except TRANSIENT:
        raise
    except (RunstreamError, OSError) as exc:
        raise RunFailed(
            f"line {line.number} of {run_dir / offline.JOURNAL} ({line.op}): {type(exc).__name__}: {exc}"
        ) from None


def _apply_entry(client: Client, run_dir: Path, entry: dict[str, Any]) -> bool:
    run_id = run_dir.name
    op = entry["op"]
    if op == "create":
        run = client.create_run(
            entry["experiment"], entry["name"], entry["tags"], entry["start_time_ms"], run_id=run_id
        )
        return run.run_id == run_id
    if op == "params":
        client.log_params(run_id, entry["params"])
    elif op == "tags":
        client.set_tags(run_id, entry["tags"])
    elif op == "delete_tag":
        with contextlib.suppress(NotFound):  # deleted by an earlier, interrupted sync
            client.delete_tag(run_id, entry["key"])
    elif op == "inputs":
        client.log_inputs(run_id, entry["inputs"])
    elif op == "file":
        client.artifacts.log_file(run_id, run_dir / entry["file"], entry["path"], entry["content_type"])
    elif op == "end":
        client.update_run(run_id, status=entry["status"], end_time_ms=entry["end_time_ms"])
    else:  # offline.lines checked it
        raise AssertionError(f"an unknown journal entry {op!r}")
    return False


def _send_writer(client: Client, w: spool.SpooledWriter, counter: _Counter, problems: list[str]) -> WriterSync:
    """Send a writer's spooled batches, keep what is refused or unreadable, note the seqs
    missing from its spool, then remove the files of its spool it has sent or knows (unless its
    process still writes it); name any other."""
    out = WriterSync(w.writer_id, w.epoch, live=spool.is_live(w.directory))
    run_dir = w.directory.parent.parent
    who = f"run {w.run_id} writer {w.writer_id} epoch {w.epoch}"
    elsewhere = _written_for_another(w, client.target)
    damaged: list[spool.Damage] = []
    gaps: list[tuple[int, int]] = []

    def refused(seq: int, data: bytes, reason: str) -> None:
        kept.keep_refused(run_dir, w, seq, data, reason + elsewhere)

    acked = spool.read_acked(w.directory)  # only a believed one spares resending batches
    if (why := acked.problem) and not out.live:
        log.warning("runstream: %s: %s; every batch of its spool is sent (the server keeps each once)", who, why)
    segments = w.segments()
    unspooled: list[str] | None = None if out.live else []  # a live process batches its own calls
    records = w.records(acked.value, quiet=out.live, damaged=damaged, unspooled=unspooled)
    if not out.live:
        records = _gaps(records, acked.claimed or 0, spool.read_sealed(w.directory), damaged, gaps)
    try:
        _stream(client, records, out, counter, refused)
    finally:
        spool.write_acked(w.directory, out.last)
    spans = spool.read_dropped(w.directory)
    gaps = spool.Spans([(first, last) for first, last, _ in spans]).outside(gaps)
    out.unreadable = len(damaged) + len(gaps)
    out.dropped = sum(points for _, _, points in spans)
    if out.dropped and not out.live:
        log.warning(
            "runstream: %s dropped %d points (batches %s) because its spool was full "
            "(RUNSTREAM_SPOOL_MAX_BYTES, on_full='drop')",
            who,
            out.dropped,
            ", ".join(f"{first}-{last}" for first, last, _ in spans),
        )
    problems += [f"{who}: {p}" for p in unspooled or []]
    if out.live:  # its process may still send those batches from memory; read again once it ends
        problems += [
            f"{who}: bytes {d.start}-{d.end} of spool segment {d.segment} unreadable ({d.reason}); "
            "left in place while its process runs"
            for d in damaged
        ]
        return out
    for d in damaged:
        kept.keep_unreadable(run_dir, w, d)
    for first, last in gaps:
        reason = "no segment holds them: one was deleted or renamed"
        if acked.problem and first == (acked.claimed or 0) + 1:
            reason += f", or they were acknowledged and trimmed ({acked.problem})"
        kept.note_missing(run_dir, w, first, last, reason)
    problems += [f"{who}: {p} is not a spool file sync knows; left in place" for p in w.remove_sent(segments)]
    return out


def _gaps(
    records: Iterator[tuple[int, bytes]],
    after: int,
    sealed: int | None,
    damaged: list[spool.Damage],
    gaps: list[tuple[int, int]],
) -> Iterator[tuple[int, bytes]]:
    """`records` (seqs ascending), noting in `gaps` each run of seqs missing from them: past
    `after` (acknowledged), between two records, and up to `sealed` (the last seq spooled, when
    the writer closed), unless unreadable bytes (`damaged`, as the reader meets them) lie there."""
    last, unreadable = after, len(damaged)
    for seq, data in records:
        if seq > last + 1 and len(damaged) == unreadable:
            gaps.append((last + 1, seq - 1))
        last, unreadable = max(last, seq), len(damaged)
        yield seq, data
    if sealed is not None and sealed > last and len(damaged) == unreadable:
        gaps.append((last + 1, sealed))


def _retry_refused(client: Client, run_dir: Path, counter: _Counter) -> list[WriterSync]:
    """Offer the batches earlier syncs kept as refused again: those the server takes now go."""
    refused = kept.refused_batches(run_dir)
    return [_retry_writer(client, run_dir, name, batches, counter) for name, batches in refused.items()]


def _retry_writer(
    client: Client, run_dir: Path, name: str, batches: list[tuple[int, Path]], counter: _Counter
) -> WriterSync:
    w = spool.SpooledWriter.at(run_dir / "writers" / name)
    out = WriterSync(w.writer_id, w.epoch, retried=True)
    files = dict(batches)
    _stream(
        client,
        ((seq, batch.read_bytes()) for seq, batch in batches),
        out,
        counter,
        refused=lambda seq, _, reason: kept.refused_again(files[seq], reason),
        taken=lambda seq: kept.taken(files[seq]),
    )
    return out


def _stream(
    client: Client,
    records: Iterator[tuple[int, bytes]],
    out: WriterSync,
    counter: _Counter,
    refused: Callable[[int, bytes, str], None],
    taken: Callable[[int], None] | None = None,
) -> None:
    """Stream `records` as they are, counting the answers into `out`; a batch refused for good
    goes to `refused`, one taken to `taken`."""
    pending: dict[int, bytes] = {}

    def requests() -> Iterator[bytes]:
        for seq, data in records:
            pending[seq] = data
            yield data

    stream = client.channel.stream_stream(
        "/runstream.v1.TrackingService/StreamMetrics",
        request_serializer=None,
        response_deserializer=pb.BatchAck.FromString,
    )
    call = stream(requests())
    try:
        for ack in call:
            code = STATUS_BY_CODE.get(ack.code, grpc.StatusCode.UNKNOWN)
            if code in RETRYABLE:
                raise from_status(code, ack.message)
            # Answers come in order; a batch the server could not decode is answered as seq 0.
            seq = ack.seq if ack.seq in pending else next(iter(pending), ack.seq)
            data = pending.pop(seq, b"")
            if code != grpc.StatusCode.OK:
                refused(seq, data, f"{code.name}: {ack.message}")
                out.refused += 1
            elif taken is not None:
                taken(seq)
            out.batches += 1
            out.points += ack.points
            counter.add(ack.points)
            out.last = max(out.last, seq)
    except grpc.RpcError as exc:
        raise from_status(exc.code(), exc.details() or "") from None
    finally:
        call.cancel()  # type: ignore[no-untyped-call]  # a no-op once the stream has ended


def _written_for_another(w: spool.SpooledWriter, target: str) -> str:
    """A word for the reasons of refused batches when the spool was written for another server."""
    try:
        written_for = str(w.meta()["target"])
    except (OSError, ValueError, KeyError):
        return ""
    return f" (this spool was written for the server at {written_for})" if written_for != target else ""


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[bool]:
    """One sync of a run at a time (the CLI's and a follower's)."""
    try:
        handle = open(run_dir / "sync.lock", "ab")  # noqa: SIM115
    except FileNotFoundError:  # removed by a sync that just finished it
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


class _Counter:
    def __init__(self, progress: Progress | None) -> None:
        self.points = 0
        self.progress = progress

    def add(self, points: int) -> None:
        self.points += points
        if self.progress is not None:
            self.progress(self.points)


class Follower(threading.Thread):
    """Auto mode: syncs one offline run in the background until its end is on the server,
    trying again every `interval` while the server is away. Once the server answers it also
    sends the writer's heartbeats, so the run is CRASHED if this process dies (and RUNNING
    again if it was marked while the server could not hear from it)."""

    def __init__(self, client: Client, run_dir: Path, writer_id: str, interval: float = 2.0) -> None:
        super().__init__(name=f"runstream-follow-{run_dir.name}", daemon=True)
        self.client, self.run_dir, self.interval = client, run_dir, interval
        self.heartbeat = pb.HeartbeatRequest(run_id=run_dir.name, writer_id=writer_id)
        self.heartbeat_s = settings.current().heartbeat_s
        self._beaten = 0.0
        self.online = False  # the run exists on the server
        self.refused = False  # the server refused part of it for good (said once)
        self.finished = threading.Event()
        self._ending = threading.Event()

    def run(self) -> None:
        while True:
            ending = self._ending.is_set()
            try:
                result = sync_run(self.client, self.run_dir)
                if not self.online and not result.busy:
                    self.online = True
                    log.warning("runstream: the server answers again; run %s is being sent", self.run_dir.name)
                if result.done or not self.run_dir.exists():
                    _say(result)
                    self.finished.set()
                    return
                self._beat()
            except (Unavailable, DeadlineExceeded, ResourceExhausted) as exc:  # away or busy: later
                log.debug("runstream: syncing run %s: %s", self.run_dir.name, exc)
            except (RunstreamError, OSError) as exc:  # refused, or the disk (full, gone): said once, tried again
                if not self.refused:
                    log.warning("runstream: run %s cannot be sent (%s); it stays in the spool", self.run_dir.name, exc)
                self.refused = True
            except ValueError:  # grpc: the client was closed: the run waits in the spool
                return
            if ending and not self.run_dir.exists():
                self.finished.set()
                return
            self._ending.wait(self.interval if not ending else 0.5)

    def _beat(self) -> None:
        if self.heartbeat_s <= 0 or time.monotonic() - self._beaten < self.heartbeat_s:
            return
        call = self.client.channel.unary_unary(
            "/runstream.v1.TrackingService/Heartbeat",
            request_serializer=pb.HeartbeatRequest.SerializeToString,
            response_deserializer=pb.HeartbeatResponse.FromString,
        )
        try:
            call(self.heartbeat, timeout=10)
            self._beaten = time.monotonic()
        except grpc.RpcError as exc:  # the stream's errors say what matters; try again next round
            log.debug("runstream: heartbeat of run %s: %s", self.run_dir.name, exc.details())

    def finish(self, timeout: float) -> bool:
        """After the run's end: wait up to `timeout` for everything to reach the server."""
        self._ending.set()
        return self.finished.wait(timeout)


def resume_orphans(client: Client, root: Path) -> threading.Thread | None:
    """What earlier processes left in the spool for this client's server: sent in the
    background (RUNSTREAM_SYNC_ON_START=0: left for `runstream sync`)."""
    orphans = [r for r in _orphan_runs(root) if _target_of(r) in (client.target, None)]
    if not orphans:
        return None
    log.warning(
        "runstream: %d run(s) in the spool %s were left by processes that ended before sending them; "
        "sending them in the background",
        len(orphans),
        root,
    )

    def send() -> None:
        for run_dir in orphans:
            try:
                _say(_sync_alone(client, run_dir, _Counter(None)))
            except TRANSIENT as exc:
                log.warning("runstream: run %s stays in the spool (%s); `runstream sync` sends it", run_dir.name, exc)

    thread = threading.Thread(target=send, name="runstream-resume", daemon=True)
    thread.start()
    return thread


def _say(result: RunSync) -> None:
    """What a background sync kept or skipped, in the log (`runstream sync` says it again)."""
    for line in result.problems:
        log.warning("runstream: %s", line)


def _orphan_runs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = []
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        writers = spool.spooled_writers(root, run_dir.name)
        journal = (run_dir / offline.JOURNAL).exists()
        live = any(spool.is_live(w.directory) for w in writers) or (journal and spool.is_live(run_dir))
        if (writers or journal) and not live:
            found.append(run_dir)
    return found


def _target_of(run_dir: Path) -> str | None:
    for line in offline.lines(run_dir)[:1]:
        return str(line.entry.get("target")) if line.op == "create" else None
    for w in spool.spooled_writers(run_dir.parent, run_dir.name):
        with contextlib.suppress(OSError, ValueError, KeyError):
            return str(w.meta()["target"])
    return None
