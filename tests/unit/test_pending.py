"""The pending calls kept in file mappings (client/pending.py): what a dead writer's files hold is
read back as the batches its batcher made or would have made, with their seqs; a call cut short
by the process's death, and what earlier generations left in a file, are not read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from runstream.client import pending
from runstream.client.pending import PendingCalls, unspooled_batches
from runstream.wire import batch as wire


def _read(directory: Path) -> tuple[list[int], list[wire.Batch], list[str]]:
    problems: list[str] = []
    found = list(unspooled_batches(directory, "run", "w", 4, problems))
    return [seq for seq, _ in found], [wire.decode(data) for _, data in found], problems


def _points(batches: list[wire.Batch]) -> list[tuple[str, int, float]]:
    return [
        (b.keys[int(k)], int(s), float(v))
        for b in batches
        for k, s, v in zip(b.key_index, b.step, b.value, strict=True)
    ]


def test_calls_not_yet_taken_are_read_back_with_the_next_seqs(tmp_path: Path) -> None:
    kept = PendingCalls(tmp_path, batch_points=4)
    kept.add(0, ("loss", "acc"), 0, 1_000, [1.0, 0.5])
    kept.add(1, ("loss",), 1, 1_001, [0.9])
    kept.add(0, ("loss", "acc"), 2, 1_002, [0.8, 0.6])
    seqs, batches, problems = _read(tmp_path)
    assert problems == [] and seqs == [1, 2]  # split as the batcher splits: whole calls, <= 4 points
    assert all(b.epoch == 4 and b.writer_id == "w" and b.run_id == "run" for b in batches)
    assert [b.seq for b in batches] == seqs
    assert _points(batches) == [
        ("loss", 0, 1.0), ("acc", 0, 0.5), ("loss", 1, 0.9), ("loss", 2, 0.8), ("acc", 2, 0.6)
    ]  # fmt: skip
    np.testing.assert_array_equal(batches[0].timestamp_ms, [1_000, 1_000, 1_001])


def test_taken_calls_are_read_until_spooled_and_old_generations_never(tmp_path: Path) -> None:
    kept = PendingCalls(tmp_path, batch_points=100)
    for step in range(50):
        kept.add(0, ("x",), step, step, [float(step)])
    kept.taken(first_seq=1)  # the batcher took them as seq 1...
    kept.add(0, ("x",), 50, 50, [50.0])  # ...while the job logs on into the other file
    seqs, batches, _ = _read(tmp_path)  # (the process died before it counted the batches)
    assert seqs == [1, 2] and [p[1] for p in _points(batches)] == list(range(51))
    kept.numbered(1)
    seqs, batches, _ = _read(tmp_path)
    assert seqs == [1, 2] and [p[1] for p in _points(batches)] == list(range(51))
    kept.spooled()  # seq 1 is in the spool
    seqs, batches, _ = _read(tmp_path)
    assert seqs == [2] and [p[1] for p in _points(batches)] == [50]
    kept.taken(first_seq=2)
    kept.numbered(1)
    kept.spooled()
    # The first file is active again: a new generation over the 50 calls of the first.
    kept.add(0, ("x",), 51, 51, [51.0])
    seqs, batches, _ = _read(tmp_path)
    assert seqs == [3] and [p[1] for p in _points(batches)] == [51]


def test_a_call_cut_short_by_death_is_not_read(tmp_path: Path) -> None:
    kept = PendingCalls(tmp_path, batch_points=100)
    kept.add(0, ("x",), 0, 0, [0.0])
    kept.add(0, ("x",), 1, 1, [1.0])
    path = tmp_path / pending.FILES[0]
    data = bytearray(path.read_bytes())
    # The process died inside the second call's copy: its last bytes (the mark) never came.
    keyset = pending.RECORD.size + len(b"x\0") + pending.MARK.size
    call = pending.CALL.size + 8 + pending.MARK.size
    second = pending.HEADER_BYTES + keyset + call
    assert data[second + call - 8 : second + call] == data[second - 8 : second]  # the marks
    data[second + call - 8 : second + call] = bytes(8)
    path.write_bytes(bytes(data))
    _, batches, problems = _read(tmp_path)
    assert problems == [] and [p[1] for p in _points(batches)] == [0]


def test_a_step_beyond_64_bits_is_refused_and_nothing_kept(tmp_path: Path) -> None:
    kept = PendingCalls(tmp_path, batch_points=100)
    with pytest.raises(OverflowError, match="64 bits"):
        kept.add(0, ("x",), 2**63, 0, [0.0])
    kept.add(0, ("x",), 1, 0, [1.0])
    _, batches, _ = _read(tmp_path)
    assert [p[1] for p in _points(batches)] == [1]


def _header(first_seq: int = 1, batch_points: int = 100, state: int = pending.ACTIVE, mark: int = 7) -> bytes:
    return pending.HEADER.pack(pending.MAGIC, mark, first_seq, batch_points, state).ljust(pending.HEADER_BYTES, b"\0")


@pytest.mark.parametrize(
    "body",
    [
        bytes(range(256)) * 64,  # garbage
        pending.RECORD.pack(2**32 - 1, 0) + b"\xff" * 64,  # a size past the end
        pending.RECORD.pack(0, 0) + bytes(64),  # a size of nothing
        # a call of keyset 5, never defined, that ends with the mark
        pending.CALL.pack(pending.CALL.size + 8 + 8, 5, 1, 1) + bytes(8) + pending.MARK.pack(7),
        # keys that are not utf-8
        pending.RECORD.pack(8 + 3 + 8, pending.KEYSET) + b"\xff\xfe\0" + pending.MARK.pack(7),
    ],
)
def test_hostile_pending_files_are_named_never_sent_as_something_else(tmp_path: Path, body: bytes) -> None:
    (tmp_path / pending.FILES[0]).write_bytes(_header() + body)
    seqs, batches, problems = _read(tmp_path)
    assert batches == [] and seqs == []
    assert len(problems) <= 1 and all(pending.FILES[0] in p for p in problems)


@pytest.mark.parametrize(
    "header",
    [
        _header(first_seq=2**63),  # seqs past what the server keeps (PostgreSQL's bigint)
        _header(batch_points=0),
        _header(state=9),
        b"RSPEND\x01",  # cut short
        b"not a pending file at all" * 4,
    ],
)
def test_pending_files_with_headers_out_of_range_are_left_alone(tmp_path: Path, header: bytes) -> None:
    keyset = pending.RECORD.pack(8 + 2 + 8, pending.KEYSET) + b"x\0" + pending.MARK.pack(7)
    call = pending.CALL.pack(pending.CALL.size + 16, 0, 1, 1) + bytes(8) + pending.MARK.pack(7)
    (tmp_path / pending.FILES[0]).write_bytes(header + keyset + call)
    seqs, _, problems = _read(tmp_path)
    assert seqs == []
    if header.startswith(pending.MAGIC) and len(header) == pending.HEADER_BYTES:
        assert len(problems) == 1 and "out of range" in problems[0]  # said, not skipped silently


def test_calls_whose_seqs_cannot_be_known_are_named_not_guessed(tmp_path: Path) -> None:
    """An active file whose first seq was not counted yet, without the taken file it follows."""
    keyset = pending.RECORD.pack(8 + 2 + 8, pending.KEYSET) + b"x\0" + pending.MARK.pack(7)
    call = pending.CALL.pack(pending.CALL.size + 16, 0, 1, 1) + bytes(8) + pending.MARK.pack(7)
    (tmp_path / pending.FILES[1]).write_bytes(
        (_header(first_seq=0) + keyset + call).ljust(pending.INITIAL_BYTES, b"\0")
    )
    seqs, _, problems = _read(tmp_path)
    assert seqs == [] and len(problems) == 1 and "seqs are unknown" in problems[0]


def test_the_active_file_follows_every_batch_of_the_taken_one(tmp_path: Path) -> None:
    kept = PendingCalls(tmp_path, batch_points=10)
    for step in range(45):
        kept.add(0, ("x",), step, step, [1.0])
    kept.taken(first_seq=3)  # 5 batches of the batcher: seqs 3..7
    kept.add(0, ("x",), 45, 45, [1.0])
    assert _read(tmp_path)[0] == [3, 4, 5, 6, 7, 8]
    kept.numbered(5)
    assert _read(tmp_path)[0] == [3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_pending_file_that_is_no_file_is_named_and_the_other_still_read(tmp_path: Path, kind: str) -> None:
    kept = PendingCalls(tmp_path, batch_points=100)
    for step in range(5):
        kept.add(0, ("x",), step, step, [1.0])
    kept.taken(first_seq=1)  # into pending.0, now BATCHING
    kept.close()
    (tmp_path / pending.FILES[1]).unlink()
    if kind == "fifo":
        os.mkfifo(tmp_path / pending.FILES[1])  # opening it for reading would wait for a writer
    else:
        (tmp_path / pending.FILES[1]).mkdir()
    seqs, batches, problems = _read(tmp_path)
    assert seqs == [1] and [p[1] for p in _points(batches)] == list(range(5))
    assert problems == [] and not pending.is_ours(tmp_path / pending.FILES[1])  # sync names it, and leaves it


def test_damage_after_good_calls_is_named_and_the_calls_before_it_sent(tmp_path: Path) -> None:
    kept = PendingCalls(tmp_path, batch_points=100)
    for step in range(10):
        kept.add(0, ("x",), step, step, [1.0])
    kept.close()
    path = tmp_path / pending.FILES[0]
    whole = path.read_bytes()
    data = bytearray(whole)
    fifth = pending.HEADER_BYTES + (8 + 2 + 8) + 4 * 40
    data[fifth : fifth + 200] = bytes(range(200))  # garbage over the fifth call on
    path.write_bytes(bytes(data))
    _, batches, problems = _read(tmp_path)
    assert [p[1] for p in _points(batches)] == [0, 1, 2, 3]
    assert len(problems) == 1 and f"bytes at {fifth} are no record" in problems[0], problems
    path.write_bytes(whole[: fifth + 20])  # cut short inside the fifth call
    _, batches, problems = _read(tmp_path)
    assert [p[1] for p in _points(batches)] == [0, 1, 2, 3] and "cut short" in problems[0], problems


def test_a_new_generation_of_calls_of_other_sizes_ends_cleanly(tmp_path: Path) -> None:
    """What an earlier generation left is zeroed: the reader never lands inside an old record."""
    kept = PendingCalls(tmp_path, batch_points=1_000)
    for step in range(20):
        kept.add(0, ("a", "b", "c"), step, step, [1.0, 2.0, 3.0])
    for first in (1, 2):  # both files turn once: pending.0 takes calls again, a new generation
        kept.taken(first_seq=first)
        kept.numbered(1)
        kept.spooled()
    kept.add(1, ("x",), 20, 20, [4.0])
    seqs, batches, problems = _read(tmp_path)
    assert problems == [] and seqs == [3] and _points(batches) == [("x", 20, 4.0)]


@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 8, pending.MAGIC + bytes(100)])
def test_only_a_writers_own_pending_files_are_taken_for_one(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / pending.FILES[0]
    path.write_bytes(content)
    assert pending.is_ours(path) == (content[:8] in (pending.MAGIC, b""))


def test_a_refused_call_leaves_nothing_that_a_shorter_call_after_it_would_show_as_damage(tmp_path: Path) -> None:
    kept = PendingCalls(tmp_path, batch_points=1000)
    kept.add(0, ("a",), 0, 0, [1.0])
    keys = tuple(f"k{i}" for i in range(500))
    with pytest.raises(TypeError, match="metric 'k499'"):
        kept.add(1, keys, 1, 1, [0.5] * 499 + ["oops"])
    kept.add(0, ("a",), 2, 2, [2.0])
    _, batches, problems = _read(tmp_path)
    assert problems == [] and _points(batches) == [("a", 0, 1.0), ("a", 2, 2.0)]
