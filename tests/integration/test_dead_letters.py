"""One bad batch never stops a shard: ingest refuses what PostgreSQL would refuse, and entries
that get into a stream anyway (written straight into Redis here, beside good ones) go to the
dead-letter stream with their reason while every good batch is stored exactly once; the CLI
lists and replays them, and shutdown still drains."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import redis

import runstream
from runstream.server.streams.keys import FIELD_BATCH, FIELD_RECEIVED_MS, Keys
from runstream.wire import batch as wire
from tests.conftest import raw_log

POINTS = 100
GOOD_BATCHES = 30


def _batch(run_id: str, writer: str, seq: int, key: str = "loss") -> bytes:
    first = seq * POINTS if seq < 2**40 else 0
    steps = np.arange(first, first + POINTS, dtype=np.int64)
    return wire.encode(run_id, writer, seq, [key], np.zeros(POINTS), steps, steps * 10, steps * 0.5)


def _metric(server, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10).read().decode()
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def _cli(server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runstream.cli", "dead-letters", *args, "--url", server.target],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("writer", "seq"),
    [("w", 2**63), ("w", 2**64 - 1), ("w", 0), ("bad\x00writer", 1), ("tab\there", 1), ("x" * 251, 1), ("é", 1)],
)
def test_ingest_refuses_what_postgresql_would_refuse(server, writer: str, seq: int) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("poison", "refused").run_id
        with pytest.raises(grpc.RpcError) as err:
            raw_log(client, _batch(run_id, writer, seq))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ("seq" in err.value.details()) if seq != 1 else ("writer_id" in err.value.details())


def test_the_sdk_refuses_a_writer_id_the_server_would_refuse(server) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("poison", "sdk").run_id
        with pytest.raises(runstream.InvalidArgument, match="writer_id"):
            client.attach(run_id, writer_id="rank\x000")


def test_poison_entries_go_to_dead_letters_and_every_good_batch_is_stored(make_server) -> None:
    server = make_server("--shards", "1")
    with runstream.Client(server.target) as client:
        run_id = client.create_run("poison", "shard").run_id
    poison = {
        "seq beyond int64": _batch(run_id, "p-seq", 2**63),
        "NUL in writer": _batch(run_id, "p\x00nul", 1),
        "NUL in key": _batch(run_id, "p-key", 1, key="lo\x00ss"),
        "unknown run": _batch(str(uuid.uuid4()), "p-run", 1),
        "random bytes": os.urandom(300),
        "not a run id": _batch("not-a-run", "p-id", 1),
    }
    r = redis.Redis.from_url(server.redis_url)
    stream = Keys(server.prefix, 1).stream(0)
    now = int(time.time() * 1000)
    with r.pipeline(transaction=True) as pipe:  # one read of the loader gets all of them together
        bad = iter(poison.values())
        for seq in range(1, GOOD_BATCHES + 1):
            pipe.xadd(stream, {FIELD_BATCH: _batch(run_id, "good", seq), FIELD_RECEIVED_MS: now})
            if seq % 5 == 0:
                pipe.xadd(stream, {FIELD_BATCH: next(bad), FIELD_RECEIVED_MS: now})
        pipe.xadd(stream, {b"x": b"an entry without a batch"})
        pipe.execute()

    assert server.wait_points(run_id, GOOD_BATCHES * POINTS) == GOOD_BATCHES * POINTS
    steps, values = server.stored(run_id)[("loss", "good")]
    assert steps.tolist() == list(range(POINTS, (GOOD_BATCHES + 1) * POINTS))
    assert values.tolist() == [s * 0.5 for s in steps.tolist()]
    deadline = time.monotonic() + 30
    while r.xlen(stream) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert r.xlen(stream) == 0  # nothing stuck behind the poison

    with runstream.Client(server.target) as client:
        letters = client.admin.dead_letters()
    assert len(letters) == len(poison) + 1
    by_writer = {d.writer_id: d for d in letters}
    assert "out of range" in by_writer["p-seq"].reason or "int64" in by_writer["p-seq"].reason
    assert by_writer["p-run"].run_id and "foreign key" in by_writer["p-run"].reason
    assert sum("undecodable" in d.reason for d in letters) == 3  # random bytes, no batch, not a run id
    assert all(d.stream == stream and d.entry_id and d.failed_ms >= now for d in letters)
    assert _metric(server, "runstream_entries_dead_lettered_total") == len(letters)

    listed = _cli(server, "ls")
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.strip().splitlines()) == 2 + len(letters)  # header, rule, one line each
    assert "ForeignKeyViolationError" in listed.stdout and "p\\x00nul" in listed.stdout  # shown, not printed raw
    assert "\x00" not in listed.stdout

    # Replayed poison comes back as new dead letters; nothing is loaded twice.
    replayed = _cli(server, "retry", "--all")
    assert replayed.returncode == 0, replayed.stderr
    assert f"{len(letters)} put back" in replayed.stdout
    deadline = time.monotonic() + 30
    with runstream.Client(server.target) as client:
        while time.monotonic() < deadline:
            again = client.admin.dead_letters()
            if len(again) == len(letters) and not {d.id for d in again} & {d.id for d in letters}:
                break
            time.sleep(0.2)
    assert len(again) == len(letters) and not {d.id for d in again} & {d.id for d in letters}
    assert server.wait_points(run_id, GOOD_BATCHES * POINTS) == GOOD_BATCHES * POINTS
    assert server.stop() == 0  # shutdown drains: nothing left pending


def test_a_replayed_dead_letter_that_can_be_stored_is_stored_once(server) -> None:
    """A dead letter whose cause has gone (written as one here) loads on retry, once."""
    with runstream.Client(server.target) as client:
        run_id = client.create_run("poison", "replay").run_id
    keys = Keys(server.prefix)
    shard = keys.shard_of(run_id)
    r = redis.Redis.from_url(server.redis_url)
    ids = [
        r.xadd(keys.dead_letters(shard), {FIELD_BATCH: _batch(run_id, "late", seq), b"reason": b"was down"}).decode()
        for seq in (1, 2)
    ]
    ids[0] = f"{shard}/{ids[0]}"  # as ListDeadLetters names it; the bare entry id is looked for in every shard
    missing = "1-0"
    done = _cli(server, "retry", ids[0], missing)
    assert done.returncode == 1
    assert "1 put back" in done.stdout and "not dead letters: 1-0" in done.stderr
    assert server.wait_points(run_id, POINTS) == POINTS
    assert _cli(server, "retry", ids[1]).returncode == 0
    assert server.wait_points(run_id, 2 * POINTS) == 2 * POINTS
    assert _cli(server, "retry", ids[1]).returncode == 1  # gone from the dead letters
    assert _cli(server, "ls").stdout.strip() == "no dead letters"
    bad = _cli(server, "retry", "not-an-id")
    assert bad.returncode == 1 and "is not a dead letter id" in bad.stderr
    for wrong, says in [
        (f"{keys.shards}/1-0", "names no shard of this server"),
        ("1" * 5000 + "/1-0", "names no shard of this server"),
        ("0/99999999999999999999-0", "is not a dead letter id"),
        (f"0/1-{2**64}", "is not a dead letter id"),
    ]:
        bad = _cli(server, "retry", wrong)
        assert bad.returncode == 1 and says in bad.stderr, (wrong[:40], bad.stderr)


def test_dead_letters_page_over_many_shards_and_each_is_replayed_once(make_server) -> None:
    """64 shards, the same entry id in several: every page in (id, shard) order, each letter on
    exactly one page; two `retry --all` at once, and an id named twice, move each letter once."""
    shards = 64
    server = make_server("--shards", str(shards))
    keys = Keys(server.prefix, shards)
    with runstream.Client(server.target) as client:
        run_id = client.create_run("poison", "many shards").run_id
    r = redis.Redis.from_url(server.redis_url)
    for shard in range(shards):  # distinct batches (a loader drops a seq it has just seen)
        for seq, eid in ((2 * shard + 1, "5-1"), (2 * shard + 2, f"{6 + shard % 3}-0")):  # 5-1 in every shard
            poison = {FIELD_BATCH: _batch(run_id, "p\x00nul", seq), b"reason": b"made here"}
            r.xadd(keys.dead_letters(shard), poison, id=eid)
    expected = [f"{shard}/5-1" for shard in range(shards)]
    expected += [f"{shard}/{ms}-0" for ms, shard in sorted((6 + shard % 3, shard) for shard in range(shards))]
    with runstream.Client(server.target) as client:
        paged = [d.id for d in client.admin.dead_letters(page_size=7)]
        assert paged == expected
        once = client.admin.retry_dead_letters(["3/5-1", "3/5-1"])
        assert once.retried == 1 and list(once.not_found) == []
    assert sum(r.xlen(k) for k in keys.all_dead_letters()) == 2 * shards - 1

    def retry_all() -> int:
        with runstream.Client(server.target) as client:
            return client.admin.retry_dead_letters(all=True).retried

    with ThreadPoolExecutor(2) as pool:
        retried = sum(pool.map(lambda _: retry_all(), range(2)))
    assert retried == 2 * shards - 1  # between the two calls, each letter once
    # Each replayed letter is refused again by the loaders and kept again: as many as before.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(r.xlen(k) for k in keys.all_dead_letters()) < 2 * shards:
        time.sleep(0.2)
    time.sleep(1)
    assert sum(r.xlen(k) for k in keys.all_dead_letters()) == 2 * shards
