"""A damaged spool and refused batches: `runstream sync` sends every intact batch past a corrupt
record (a flipped byte, a flipped length, garbage between records), keeps what it could not read
under `<run>/corrupt/` and the batches the server refused under `<run>/refused/`, says so one
line each, exits 1, and never deletes what it says it kept. Old-format segments still read."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import runstream
from runstream.client import spool
from runstream.wire import batch as wire
from tests.conftest import Server, cli_sync

BATCHES = 12
POINTS = 1_000  # per batch
GARBAGE = b"not a spool record; " * 10


def _offline_spool(server: Server, root: Path, monkeypatch: Any) -> tuple[str, spool.SpooledWriter]:
    """An offline run of BATCHES batches of POINTS points each in the spool at `root`."""
    monkeypatch.setenv("RUNSTREAM_SPOOL_DIR", str(root))
    with runstream.Client(server.target) as client:
        run = client.start_run("damage", record_source=False, offline=True, batch_points=POINTS)
        for step in range(BATCHES * POINTS):
            run.log_metric("loss", step * 0.5, step=step)
        run.end()
    [writer] = spool.spooled_writers(root, run.run_id)
    return run.run_id, writer


def _batches(writer: spool.SpooledWriter) -> list[tuple[bytes, np.ndarray]]:
    """Every spooled batch of `writer`, with its steps."""
    return [(data, wire.decode(data).step.copy()) for _, data in writer.records()]


def _stored_steps(server: Server, run_id: str, expected: int) -> np.ndarray:
    assert server.wait_points(run_id, expected) == expected
    [(steps, values)] = server.stored(run_id).values()
    np.testing.assert_array_equal(values, steps * 0.5)
    return np.sort(steps)


def _damage(segment: Path, record: bytes, how: str) -> bytes:
    """Damage the spooled `record` in `segment` the way `how` says; the bytes now unreadable."""
    blob = bytearray(segment.read_bytes())
    at = blob.find(record)  # the batch itself, whatever the record header before it
    assert at > 0
    if how == "payload":
        blob[at + len(record) // 2] ^= 0xFF
        bad = bytes(blob[at : at + len(record)])
    elif how == "length":
        length = blob.rfind(struct.pack("<I", len(record)), at - 24, at)
        assert length >= 0
        blob[length + 2] ^= 0x01  # 64 KiB longer: past the next records
        bad = bytes(blob[at : at + len(record)])
    else:
        end = at + len(record)
        blob[end:end] = GARBAGE
        bad = GARBAGE
    segment.write_bytes(bytes(blob))
    return bad


@pytest.mark.parametrize("how", ["payload", "length", "garbage"])
def test_sync_sends_every_intact_batch_past_a_corrupt_record_and_keeps_it(
    make_server: Any, tmp_path: Path, monkeypatch: Any, how: str
) -> None:
    server = make_server(start=False)
    run_id, writer = _offline_spool(server, tmp_path, monkeypatch)
    batches = _batches(writer)
    assert len(batches) >= 5
    [segment] = writer.directory.glob("*.seg")
    bad = _damage(segment, batches[2][0], how)
    lost = batches[2][1] if how != "garbage" else np.empty(0, dtype=np.int64)
    expected = np.setdiff1d(np.arange(BATCHES * POINTS), lost)

    server.start()
    out = cli_sync(server, tmp_path, check=False)
    assert out.returncode == 1, out.stderr
    np.testing.assert_array_equal(_stored_steps(server, run_id, len(expected)), expected)  # each once
    corrupt = tmp_path / run_id / "corrupt"
    kept = list(corrupt.glob("*.bin"))
    assert len(kept) == 1 and bad in kept[0].read_bytes(), kept
    assert kept[0].with_suffix(".reason").read_text().strip()
    line = next(x for x in out.stderr.splitlines() if str(kept[0]) in x)
    assert run_id in line and segment.name in line, out.stderr  # where it was, and where it is now
    assert "kept" in out.stdout, out.stdout  # the table says so too

    again = cli_sync(server, tmp_path, check=False)  # nothing resent, the damage still kept and said
    assert again.returncode == 1 and str(kept[0]) in again.stderr, again.stderr
    assert server.wait_points(run_id, len(expected)) == len(expected)
    assert kept[0].is_file()
    with runstream.Client(server.target) as client:
        assert runstream.wire.status.RUN_STATUS_NAMES[client.get_run(run_id).status] == "FINISHED"


def test_the_reader_finds_every_record_no_flipped_bit_touched(tmp_path: Path) -> None:
    """Bits flipped anywhere in a segment: every record they did not touch is read, every one
    they touched lies in a reported Damage (a unit test of the reader, no server)."""
    rng = np.random.default_rng(33)
    writer = spool.SpoolWriter(tmp_path, "run", "w", 1, "127.0.0.1:1")
    batches = {seq: rng.bytes(int(rng.integers(40, 3_000))) for seq in range(1, 41)}
    for seq, data in batches.items():
        writer.append(seq, data)
    writer.close(all_acked=False, upto=0)
    [spooled] = spool.spooled_writers(tmp_path)
    assert dict(spooled.records()) == batches
    [segment] = spooled.directory.glob("*.seg")
    clean = segment.read_bytes()
    spans, at = {}, len(spool.SEGMENT_HEADER)
    for seq, data in batches.items():
        spans[seq] = (at, at + spool.RECORD_HEADER + len(data))
        at = spans[seq][1]
    for _ in range(200):
        blob = bytearray(clean)
        where = np.arange(len(spool.SEGMENT_HEADER), len(blob))
        flipped = [int(i) for i in rng.choice(where, int(rng.integers(1, 5)), replace=False)]
        for i in flipped:
            blob[i] ^= 1 << int(rng.integers(8))
        segment.write_bytes(bytes(blob))
        damaged: list[spool.Damage] = []
        read = dict(spooled.records(damaged=damaged))
        for seq, (start, end) in spans.items():
            hit = [i for i in flipped if start <= i < end]
            if not hit:
                assert read[seq] == batches[seq]
            else:
                assert seq not in read and any(d.start <= i < d.end for d in damaged for i in hit), (seq, damaged)


def test_a_torn_last_record_of_a_dead_writer_is_dropped_with_one_line(
    make_server: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    server = make_server(start=False)
    run_id, writer = _offline_spool(server, tmp_path, monkeypatch)
    batches = _batches(writer)
    [segment] = writer.directory.glob("*.seg")
    with open(segment, "r+b") as f:  # the process died writing the last record: never sent
        f.truncate(segment.stat().st_size - len(batches[-1][0]) // 2)
    (writer.directory / "sealed").unlink()  # nor did it close its spool, which says its last seq

    server.start()
    out = cli_sync(server, tmp_path, check=False)
    assert out.returncode == 0, out.stderr
    expected = np.concatenate([steps for _, steps in batches[:-1]])
    np.testing.assert_array_equal(_stored_steps(server, run_id, len(expected)), expected)
    assert len([x for x in out.stderr.splitlines() if "torn" in x]) == 1, out.stderr
    assert not (tmp_path / run_id).exists()


def _old_format(writer: spool.SpooledWriter) -> Path:
    """Rewrite the writer's spool as runstream wrote it before record magics: no segment header,
    records of u32 length, u32 crc32, u64 seq, the batch."""
    records = list(writer.records())
    for segment in writer.directory.glob("*.seg"):
        segment.unlink()
    old = writer.directory / f"{records[0][0]:020d}.seg"
    old.write_bytes(b"".join(struct.pack("<IIQ", len(d), zlib.crc32(d), seq) + d for seq, d in records))
    return old


def test_old_format_segments_still_read(make_server: Any, tmp_path: Path, monkeypatch: Any) -> None:
    server = make_server(start=False)
    run_id, writer = _offline_spool(server, tmp_path, monkeypatch)
    _old_format(writer)
    server.start()
    out = cli_sync(server, tmp_path, check=False)
    assert out.returncode == 0, out.stderr
    expected = np.arange(BATCHES * POINTS)
    np.testing.assert_array_equal(_stored_steps(server, run_id, len(expected)), expected)
    assert not (tmp_path / run_id).exists()


def test_an_old_format_segment_keeps_what_follows_a_corrupt_record(
    make_server: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    server = make_server(start=False)
    run_id, writer = _offline_spool(server, tmp_path, monkeypatch)
    batches = _batches(writer)
    segment = _old_format(writer)
    _damage(segment, batches[2][0], "payload")
    tail = segment.read_bytes()[segment.read_bytes().find(batches[2][0][:64]) - 16 :]  # no magic to resync on
    server.start()
    out = cli_sync(server, tmp_path, check=False)
    assert out.returncode == 1, out.stderr
    expected = np.concatenate([batches[0][1], batches[1][1]])  # the two records before the bad one
    np.testing.assert_array_equal(_stored_steps(server, run_id, len(expected)), expected)
    [kept] = (tmp_path / run_id / "corrupt").glob("*.bin")
    assert kept.read_bytes() == tail and str(kept) in out.stderr


JOB = """
import os, sys, runstream
with runstream.Client(os.environ["RUNSTREAM_URL"]) as client:
    run = client.start_run("refused", record_source=False, batch_points=1_000)
    for step in range(5_000):
        run.log_metric("loss", step * 0.5, step=step)
    run.flush()
    print(run.run_id, flush=True)
    sys.stdin.readline()  # the test has stopped the server
    for step in range(5_000, 20_000):
        run.log_metric("loss", step * 0.5, step=step)
    run.writer.persist(30)
    print("spooled", len(run.writer._sender.unacked), flush=True)
    sys.stdin.readline()  # never comes: SIGKILL
"""


def _killed_with_unacked_batches(server: Server, root: Path) -> str:
    """A job logs 5,000 points to `server`, which is then stopped; the job spools 15,000 more
    and is SIGKILLed. The run's id."""
    env = {**os.environ, "RUNSTREAM_URL": server.target, "RUNSTREAM_SPOOL_DIR": str(root)}
    job = subprocess.Popen(
        [sys.executable, "-c", JOB], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert job.stdin is not None and job.stdout is not None
    try:
        run_id = job.stdout.readline().strip()
        assert server.wait_points(run_id, 5_000) == 5_000
        server.stop(signal.SIGKILL)
        job.stdin.write("go\n")
        job.stdin.flush()
        spooled = job.stdout.readline().split()
        assert spooled[0] == "spooled" and int(spooled[1]) > 0, spooled
        job.send_signal(signal.SIGKILL)
        job.wait(10)
    finally:
        job.kill()
    return run_id


def _refused_kept(root: Path, run_id: str, out: subprocess.CompletedProcess[str]) -> list[Path]:
    assert out.returncode == 1, out.stderr
    refused = root / run_id / "refused"
    kept = sorted(refused.glob("*.batch"))
    assert kept and all(k.with_suffix(".reason").is_file() for k in kept), kept
    lines = [x for x in out.stderr.splitlines() if str(refused) in x]
    assert lines and all(run_id in x and "refused" in x for x in lines), out.stderr
    return kept


def test_batches_of_a_run_deleted_before_the_sync_stay_kept_until_it_is_restored(
    make_server: Any, tmp_path: Path
) -> None:
    server = make_server()
    run_id = _killed_with_unacked_batches(server, tmp_path)
    server.start()
    with runstream.Client(server.target) as client:
        client.delete_run(run_id)
    out = cli_sync(server, tmp_path, check=False)
    kept = _refused_kept(tmp_path, run_id, out)
    assert "deleted" in out.stderr
    again = cli_sync(server, tmp_path, check=False)  # still kept, still said; nothing sent twice
    assert _refused_kept(tmp_path, run_id, again) == kept
    with runstream.Client(server.target) as client:
        client.restore_run(run_id)
    last = cli_sync(server, tmp_path, check=False)  # the refused batches are offered again, and now taken
    assert last.returncode == 0, last.stderr
    np.testing.assert_array_equal(_stored_steps(server, run_id, 20_000), np.arange(20_000))
    assert not (tmp_path / run_id).exists()


def test_another_servers_spool_is_refused_kept_and_sent_to_its_own_server_later(
    make_server: Any, tmp_path: Path
) -> None:
    own = make_server()
    run_id = _killed_with_unacked_batches(own, tmp_path)
    other = make_server()
    out = cli_sync(other, tmp_path, check=False)
    _refused_kept(tmp_path, run_id, out)
    assert own.target in out.stderr  # the spool says which server it was written for
    own.start()
    last = cli_sync(own, tmp_path, check=False)
    assert last.returncode == 0, last.stderr
    np.testing.assert_array_equal(_stored_steps(own, run_id, 20_000), np.arange(20_000))
    assert not (tmp_path / run_id).exists()


def _offline_runs(server: Server, root: Path, monkeypatch: Any, count: int) -> list[str]:
    """`count` offline runs in the spool at `root`, their ids sorted (the order a sync takes
    them): each journals create, params, a file, tags and its end, and spools BATCHES batches."""
    monkeypatch.setenv("RUNSTREAM_SPOOL_DIR", str(root))
    ids = []
    with runstream.Client(server.target) as client:
        for i in range(count):
            run = client.start_run(
                "damage", f"run{i}", record_source=False, offline=True, batch_points=POINTS, params={"lr": 0.1}
            )
            for step in range(BATCHES * POINTS):
                run.log_metric("loss", step * 0.5, step=step)
            run.log_text(f"notes of run{i}", "notes.txt")
            run.set_tag("stage", "done")
            run.end()
            ids.append(run.run_id)
    return sorted(ids)


def _journal(root: Path, run_id: str) -> Path:
    journal = root / run_id / "run.jsonl"
    ops = [json.loads(x)["op"] for x in journal.read_text().splitlines()]
    assert ops == ["create", "params", "file", "tags", "end"], ops
    return journal


def _edit_line(journal: Path, number: int, old: str, new: str) -> str:
    """Replace `old` by `new` in line `number` (1-based) of `journal`; the damaged line."""
    lines = journal.read_text().splitlines(keepends=True)
    assert old in lines[number - 1]
    lines[number - 1] = lines[number - 1].replace(old, new, 1)
    journal.write_text("".join(lines))
    return lines[number - 1]


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _whole(server: Server, run_id: str, params: bool = True) -> None:
    """The run is on the server with every point once, its tag and file, FINISHED."""
    np.testing.assert_array_equal(_stored_steps(server, run_id, BATCHES * POINTS), np.arange(BATCHES * POINTS))
    with runstream.Client(server.target) as client:
        got = client.get_run(run_id)
        assert runstream.wire.status.RUN_STATUS_NAMES[got.status] == "FINISHED"
        assert got.tags["stage"] == "done" and (got.params.get("lr") == "0.1") == params
        assert [a.path for a in client.list_artifacts(run_id)] == ["notes.txt"]


def _line(out: subprocess.CompletedProcess[str], *words: str) -> str:
    """The one stderr line that holds every word."""
    found = [x for x in out.stderr.splitlines() if all(w in x for w in words)]
    assert len(found) == 1, (words, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    return found[0]


def test_a_bad_journal_line_is_kept_and_named_and_the_other_runs_go_on(
    make_server: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    server = make_server(start=False)
    intact, bad_params, bad_create = _offline_runs(server, tmp_path, monkeypatch, 3)
    bad = _edit_line(_journal(tmp_path, bad_params), 2, '{"op"', '{"op",')  # no longer JSON
    _edit_line(_journal(tmp_path, bad_create), 1, '{"op"', '{"op",')  # its create entry
    before = _files(tmp_path / bad_create)

    server.start()
    out = cli_sync(server, tmp_path, check=False)
    assert out.returncode == 1, out.stderr
    _whole(server, intact)
    assert not (tmp_path / intact).exists()
    # The unreadable params line is kept and named; the entries after it went on.
    _whole(server, bad_params, params=False)
    [kept] = (tmp_path / bad_params / "corrupt").glob("*.entry")
    assert kept.read_text() == bad
    _line(out, bad_params, "run.jsonl", "line 2", str(kept))
    assert {p.name for p in (tmp_path / bad_params).iterdir()} == {"corrupt"}
    # A run whose create entry is unreadable cannot be made: named, its spool left as it was.
    _line(out, bad_create, str(tmp_path / bad_create / "run.jsonl"), "line 1")
    assert _files(tmp_path / bad_create).items() >= before.items()
    with runstream.Client(server.target) as client, pytest.raises(runstream.RunNotFound):
        client.get_run(bad_create)

    _edit_line(tmp_path / bad_create / "run.jsonl", 1, '{"op",', '{"op"')  # a person mends it
    again = cli_sync(server, tmp_path, check=False)
    assert again.returncode == 1, again.stderr  # the kept line is still named
    _line(again, str(kept))
    _whole(server, bad_create)
    assert not (tmp_path / bad_create).exists()


def test_an_entry_missing_a_field_a_missing_file_and_an_odd_writer_directory_stop_nothing_else(
    make_server: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    server = make_server(start=False)
    no_field, no_file, odd_writer, intact = _offline_runs(server, tmp_path, monkeypatch, 4)
    _edit_line(_journal(tmp_path, no_field), 2, '"params":', '"parameters":')
    _journal(tmp_path, no_file)
    (tmp_path / no_file / "files" / "000001").unlink()
    [writer] = spool.spooled_writers(tmp_path, odd_writer)
    odd = writer.directory.rename(writer.directory.with_name(writer.directory.name + ".old"))

    server.start()
    out = cli_sync(server, tmp_path, check=False)
    assert out.returncode == 1, out.stderr
    _whole(server, intact)
    _whole(server, no_field, params=False)
    _line(out, no_field, "run.jsonl", "line 2", "params", "corrupt")
    np.testing.assert_array_equal(_stored_steps(server, no_file, BATCHES * POINTS), np.arange(BATCHES * POINTS))
    _line(out, no_file, "line 3", "files/000001", "missing", "corrupt")
    with runstream.Client(server.target) as client:
        assert not client.list_artifacts(no_file)
        got = client.get_run(odd_writer)  # its journal went; its odd writer directory is left alone
        assert runstream.wire.status.RUN_STATUS_NAMES[got.status] == "FINISHED" and got.tags["stage"] == "done"
    assert server.wait_points(odd_writer, 0) == 0
    _line(out, odd_writer, odd.name, "left")
    assert any(odd.glob("*.seg"))
    again = cli_sync(server, tmp_path, check=False)  # said again, never deleted
    _line(again, odd_writer, odd.name, "left")
    assert any(odd.glob("*.seg"))


def test_the_start_up_sync_goes_past_a_bad_journal_line(make_server: Any, tmp_path: Path, monkeypatch: Any) -> None:
    server = make_server(start=False)
    bad, intact = _offline_runs(server, tmp_path, monkeypatch, 2)
    _edit_line(_journal(tmp_path, bad), 2, '"params":', '"parameters":')
    server.start()
    with runstream.Client(server.target) as client:
        thread = runstream.client.sync.resume_orphans(client, tmp_path)
        assert thread is not None
        thread.join(60)
    _whole(server, bad, params=False)
    _whole(server, intact)


def test_a_damaged_acked_file_never_skips_a_batch(make_server: Any, tmp_path: Path, monkeypatch: Any) -> None:
    server = make_server(start=False)
    run_id, writer = _offline_spool(server, tmp_path, monkeypatch)
    (writer.directory / "acked").write_text("8\n")  # no checksum: not believed
    server.start()
    out = cli_sync(server, tmp_path, check=False)
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(_stored_steps(server, run_id, BATCHES * POINTS), np.arange(BATCHES * POINTS))
    _line(out, run_id, "acked")
    assert not (tmp_path / run_id).exists()


def test_acked_is_believed_only_with_its_checksum(tmp_path: Path) -> None:
    spool.write_acked(tmp_path, 40)
    assert spool.read_acked(tmp_path).value == 40 and not spool.read_acked(tmp_path).problem
    spool.write_acked(tmp_path, 30)  # never backwards
    assert spool.read_acked(tmp_path).value == 40
    for text in ("40\n", "41 " + (tmp_path / "acked").read_text().split()[1], "x", ""):
        (tmp_path / "acked").write_text(text)
        acked = spool.read_acked(tmp_path)
        assert acked.value == 0 and acked.problem, text
        spool.write_acked(tmp_path, 7)  # a bad one is overwritten
        assert spool.read_acked(tmp_path).value == 7
    (tmp_path / "acked").unlink()
    assert spool.read_acked(tmp_path).value == 0 and not spool.read_acked(tmp_path).problem


def test_a_renamed_segment_is_named_missing_and_never_deleted(
    make_server: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    server = make_server(start=False)
    run_id, writer = _offline_spool(server, tmp_path, monkeypatch)
    last = max(seq for seq, _ in writer.records())
    [segment] = writer.directory.glob("*.seg")
    renamed = segment.rename(segment.with_name(segment.name + ".bak"))
    content = renamed.read_bytes()
    server.start()
    out = cli_sync(server, tmp_path, check=False)
    assert out.returncode == 1, out.stderr
    _line(out, run_id, f"seqs 1-{last}", "missing")
    _line(out, run_id, renamed.name, "left")
    assert renamed.read_bytes() == content
    again = cli_sync(server, tmp_path, check=False)
    assert again.returncode == 1 and renamed.read_bytes() == content
    _line(again, run_id, renamed.name, "left")


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_a_deleted_segment_is_a_gap_named_by_its_seqs(
    make_server: Any, tmp_path: Path, monkeypatch: Any, which: str
) -> None:
    server = make_server(start=False)
    monkeypatch.setattr(spool, "SEGMENT_BYTES", 60_000)  # a few batches a segment
    run_id, writer = _offline_spool(server, tmp_path, monkeypatch)
    batches = _batches(writer)
    seqs = [seq for seq, _ in writer.records()]
    segments = sorted(writer.directory.glob("*.seg"))
    assert len(segments) >= 3, segments
    gone = {"first": 0, "middle": 1, "last": len(segments) - 1}[which]
    firsts = [int(s.stem) for s in segments] + [seqs[-1] + 1]
    lost = range(firsts[gone], firsts[gone + 1])
    segments[gone].unlink()
    expected = np.concatenate([steps for seq, (_, steps) in zip(seqs, batches, strict=True) if seq not in lost])
    server.start()
    out = cli_sync(server, tmp_path, check=False)
    assert out.returncode == 1, out.stderr
    np.testing.assert_array_equal(_stored_steps(server, run_id, len(expected)), expected)
    _line(out, run_id, f"seqs {lost[0]}-{lost[-1]}", "missing")


@pytest.mark.parametrize("how", ["999", "forged"])
def test_a_run_synced_file_saying_too_much_is_not_believed(
    make_server: Any, tmp_path: Path, monkeypatch: Any, how: str
) -> None:
    server = make_server(start=False)
    [run_id] = _offline_runs(server, tmp_path, monkeypatch, 1)
    if how == "999":
        (tmp_path / run_id / "run.synced").write_text("999\n")
    else:  # well formed, but the server never saw the run
        runstream.client.offline.mark_synced(tmp_path / run_id, 5)
    server.start()
    out = cli_sync(server, tmp_path, check=False)
    assert out.returncode == 0, out.stderr
    _line(out, run_id, "run.synced")
    _whole(server, run_id)
    assert not (tmp_path / run_id).exists()
