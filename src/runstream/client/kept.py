"""What a sync could not send, kept in the run's spool directory until a person removes it:

    <run_id>/refused/<writer dir>.<seq>.batch    a batch the server refused for good, as sent
    <run_id>/refused/<writer dir>.<seq>.reason   the server's answer
    <run_id>/corrupt/<writer dir>.<segment>.<start>-<end>.bin    bytes of a spool segment that
                                                                 hold no readable record
    <run_id>/corrupt/<same>.reason               why they could not be read
    <run_id>/corrupt/journal.line<n>.entry       an offline run's journal line that could not be
    <run_id>/corrupt/journal.line<n>.reason      applied (unreadable, fields missing, its
                                                 artifact's copy missing), and why
    <run_id>/corrupt/<writer dir>.<first>-<last>.missing    a note of seqs missing from a
                                                            writer's spool (a segment gone)

Every sync offers the refused batches to the server again (a run restored, or a spool sent to
the server it was written for, takes them; those go), and says what is still kept, one line
each (`report`), so that nothing is lost without a word and a person can read it, then delete it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from runstream.client import spool

REFUSED = "refused"
CORRUPT = "corrupt"
COPY_BYTES = 1024 * 1024


def keep_refused(run_dir: Path, writer: spool.SpooledWriter, seq: int, data: bytes, reason: str) -> Path:
    directory = run_dir / REFUSED
    directory.mkdir(exist_ok=True)
    batch = directory / f"{writer.directory.name}.{seq}.batch"
    _write(batch, [data])
    _write(batch.with_suffix(".reason"), [reason.encode() + b"\n"])
    return batch


def keep_unreadable(run_dir: Path, writer: spool.SpooledWriter, damage: spool.Damage) -> Path:
    """Copy the unreadable bytes out of the segment (before the writer's spool is removed)."""
    directory = run_dir / CORRUPT
    directory.mkdir(exist_ok=True)
    kept = directory / f"{writer.directory.name}.{damage.segment.stem}.{damage.start}-{damage.end}.bin"
    with open(damage.segment, "rb") as source:
        source.seek(damage.start)
        _write(kept, _chunks(source, damage.end - damage.start))
    _write(kept.with_suffix(".reason"), [damage.reason.encode() + b"\n"])
    return kept


def keep_entry(run_dir: Path, number: int, text: bytes, reason: str) -> Path:
    """A line of an offline run's journal that sync could not apply (it goes on after it)."""
    directory = run_dir / CORRUPT
    directory.mkdir(exist_ok=True)
    kept = directory / f"journal.line{number}.entry"
    _write(kept, [text + b"\n"])
    _write(kept.with_suffix(".reason"), [reason.encode() + b"\n"])
    return kept


def note_missing(run_dir: Path, writer: spool.SpooledWriter, first: int, last: int, reason: str) -> Path:
    """Seqs `first` to `last` of a writer are in no segment of its spool: noted, so that every
    later sync says so again."""
    directory = run_dir / CORRUPT
    directory.mkdir(exist_ok=True)
    note = directory / f"{writer.directory.name}.{first}-{last}.missing"
    _write(note, [reason.encode() + b"\n"])
    return note


def refused_batches(run_dir: Path) -> dict[str, list[tuple[int, Path]]]:
    """The kept refused batches by writer directory name: (seq, file), in seq order (a file
    whose name says neither is left out)."""
    found: dict[str, list[tuple[int, Path]]] = {}
    for batch in (run_dir / REFUSED).glob("*.batch"):
        writer, _, seq = batch.stem.rpartition(".")
        if _writer_name(writer) and seq.isdigit():
            found.setdefault(writer, []).append((int(seq), batch))
    return {writer: sorted(batches) for writer, batches in sorted(found.items())}


def refused_again(batch: Path, reason: str) -> None:
    """The server refused a kept batch again: its reason is updated unless it says the same
    (the kept one may add which server the spool was written for)."""
    if not _reason(batch).startswith(reason):
        _write(batch.with_suffix(".reason"), [reason.encode() + b"\n"])


def taken(batch: Path) -> None:
    """The server has now taken a batch it refused before: it is no longer kept."""
    batch.unlink(missing_ok=True)
    batch.with_suffix(".reason").unlink(missing_ok=True)
    _remove_if_empty(batch.parent)


def report(run_dir: Path) -> list[str]:
    """One line per run of consecutive refused seqs of a writer with the same reason, and one
    per unreadable span, each naming where it is kept."""
    lines = []
    for name, batches in refused_batches(run_dir).items():
        groups: list[tuple[str, list[int]]] = []
        for seq, batch in batches:
            reason = _reason(batch)
            if groups and groups[-1][0] == reason and groups[-1][1][-1] == seq - 1:
                groups[-1][1].append(seq)
            else:
                groups.append((reason, [seq]))
        for reason, seqs in groups:
            which = f"seq {seqs[0]}" if len(seqs) == 1 else f"seqs {seqs[0]}-{seqs[-1]}"
            lines.append(
                f"{_writer(run_dir, name)}: {len(seqs)} batch(es), {which}, refused by the server ({reason}); "
                f"kept in {run_dir / REFUSED}"
            )
    for kept in sorted((run_dir / CORRUPT).glob("*.bin")):
        name, segment, span = [*kept.stem.rsplit(".", 2), "?", "?"][:3]
        lines.append(
            f"{_writer(run_dir, name)}: bytes {span} of spool segment {segment}.seg unreadable ({_reason(kept)}); "
            f"kept in {kept}"
        )
    for note in sorted((run_dir / CORRUPT).glob("*.missing")):
        name, _, span = note.stem.rpartition(".")
        lines.append(
            f"{_writer(run_dir, name)}: seqs {span} are missing from its spool ({_text(note)}); noted in {note}"
        )
    for number, kept in sorted((_line_number(p), p) for p in (run_dir / CORRUPT).glob("journal.line*.entry")):
        lines.append(f"run {run_dir.name}: line {number} of run.jsonl {_reason(kept)}; kept in {kept}")
    return lines


def _line_number(kept: Path) -> int:
    number = kept.stem.removeprefix("journal.line")
    return int(number) if number.isdigit() else 0


def _writer_name(name: str) -> spool.SpooledWriter | None:
    try:
        return spool.SpooledWriter.at(Path("run", "writers", name))
    except ValueError:
        return None


def _writer(run_dir: Path, name: str) -> str:
    w = _writer_name(name)
    if w is None:
        return f"run {run_dir.name} (writer directory {name})"
    return f"run {run_dir.name} writer {w.writer_id} epoch {w.epoch}"


def _reason(kept: Path) -> str:
    return _text(kept.with_suffix(".reason"))


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except FileNotFoundError:
        return "no reason kept"


def _chunks(source: IO[bytes], size: int) -> Iterator[bytes]:
    while size > 0 and (chunk := source.read(min(size, COPY_BYTES))):
        size -= len(chunk)
        yield chunk


def _write(path: Path, chunks: Iterable[bytes]) -> None:
    """Written and fsync-ed before the spool it comes from is removed."""
    with open(path, "wb") as out:
        for chunk in chunks:
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())


def _remove_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):  # something is still kept in it
        directory.rmdir()
