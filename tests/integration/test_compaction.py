"""The compactor: crash-safe under ingest and reads, and every read the same before and after.

A compactor is SIGKILLed again and again while four writers log and a reader reads; one of them
is killed inside its transaction (after it deleted the old chunks and wrote the new ones). No
read may see a point twice or lose one it saw before, and afterwards every (writer, key, step)
is stored exactly once, in compacted chunks.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import asyncpg
import numpy as np
import pytest

import runstream
from runstream.wire import batch as wire
from tests.conftest import PG_ADMIN_URL, Server, raw_log

WRITERS = 4
STEPS = 40_000  # per writer and key: enough for the compactor to take each series more than once
BATCH = 1_000


def _log_all(server: Server, run_id: str) -> None:
    with runstream.Client(server.target) as client:
        for seq, lo in enumerate(range(0, STEPS, BATCH), start=1):
            for w in range(WRITERS):
                steps = np.arange(lo, lo + BATCH)
                data = wire.encode(
                    run_id,
                    f"rank{w}",
                    seq,
                    ["loss", "acc"],
                    np.repeat([0, 1], BATCH),
                    np.concatenate([steps, steps]),
                    None,
                    np.concatenate([np.sin(steps / 1000) + w, steps * 1e-5]),
                )
                assert raw_log(client, data).code == 0
            time.sleep(0.35)  # ~15 s of logging: compactors come and go meanwhile


def test_a_compactor_killed_anywhere_loses_and_doubles_nothing(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server("--compactors", "0")
    with runstream.Client(server.target) as client:
        run_id = client.create_run("compaction").run_id
    logging = threading.Thread(target=_log_all, args=(server, run_id))
    logging.start()

    seen: dict[int, int] = {}  # writer index -> points seen in the last read
    problems: list[str] = []
    reads = 0

    def read_while_logging() -> None:
        nonlocal reads
        with runstream.QueryClient(server.target) as q:
            while logging.is_alive():
                try:
                    h = q.get_metric_history(run_id, "loss", max_points=200_000)
                except runstream.NotFound:  # nothing loaded yet
                    time.sleep(0.05)
                    continue
                if h.downsampled:
                    problems.append("a history of at most 200,000 points came back downsampled")
                    return
                for w in range(WRITERS):
                    steps = h.step[h.writer == w]
                    if len(np.unique(steps)) != len(steps):
                        problems.append(f"rank{w}: a step read twice ({len(steps) - len(np.unique(steps))})")
                    if len(steps) < seen.get(w, 0):
                        problems.append(f"rank{w}: {seen[w]} points read, then {len(steps)}")
                    seen[w] = len(steps)
                reads += 1

    reader = threading.Thread(target=read_while_logging)
    reader.start()
    rng = random.Random(7)
    kills = 0
    while logging.is_alive():
        failpoint = kills % 3 == 0  # every third: killed inside the transaction, after the swap
        env = {"RUNSTREAM_FAILPOINT": "compactor.after_swap:600"} if failpoint else None
        compactor = make_server("--role", "compact", "--compact-delay", "0", like=server, env=env)
        if failpoint:
            compactor.wait_output("failpoint compactor.after_swap: pausing")
        else:
            time.sleep(rng.uniform(0.05, 1.5))
        compactor.stop(signal.SIGKILL)
        kills += 1
    reader.join()
    logging.join()
    assert not problems, problems[:5]
    assert reads >= 3 and kills >= 3, (reads, kills)
    # the killed compactors did compact between kills: their commits stand, their kills undid the rest
    assert server.sql("SELECT count(*) AS n FROM metric_chunks WHERE codec <> 0")[0]["n"] > 0

    finisher = make_server("--role", "compact", "--compact-delay", "0", like=server)
    with runstream.Client(server.target) as client:
        assert server.wait_points(run_id, WRITERS * 2 * STEPS) == WRITERS * 2 * STEPS
        client.update_run(run_id, status="FINISHED")
    server.wait_compacted(run_id)
    stored = server.stored(run_id)
    assert len(stored) == WRITERS * 2
    for (key, writer), (steps, _) in stored.items():
        assert steps.tolist() == list(range(STEPS)), (key, writer)
    finisher.stop()


def test_every_read_is_the_same_before_and_after_compaction(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server("--compact-delay", "0")  # too few points to compact before the run ends
    rng = np.random.default_rng(5)
    with runstream.Client(server.target) as client:
        run_id = client.create_run("same reads").run_id
        for w in range(2):
            steps = np.sort(rng.choice(30_000, 12_000, replace=False))
            values = rng.standard_normal(12_000)
            values[[5, 500, 5000]] = [np.nan, np.inf, -np.inf]
            for seq, lo in enumerate(range(0, 12_000, 3_000), start=1):
                part = slice(lo, lo + 3_000)
                data = wire.encode(run_id, f"w{w}", seq, ["x"], np.zeros(3_000), steps[part], None, values[part])
                assert raw_log(client, data).code == 0
        assert server.wait_points(run_id, 24_000) == 24_000

    def reads() -> list:
        with runstream.QueryClient(server.target) as q:
            out = [
                q.get_metric_history(run_id, "x", max_points=m, min_step=lo, max_step=hi)
                for m in (1, 7, 300, 1000, 200_000)
                for lo, hi in ((None, None), (1234, 25_678), (10, 40))
            ]
            out += [[(p.writer, p.step.tolist(), p.value.tolist()) for p in q.read_metrics(run_id, "x")]]
            out += [q.compare_runs([run_id], ["x"], max_points=50).series["x"]]
            tail = q.tail_metrics([run_id], ["x"], from_step=29_000)
            got = 0
            for piece in tail:
                got += len(piece)
                if got >= sum(int(s) >= 29_000 for s in _steps(server, run_id)):
                    break
            out.append(got)
        return [repr(x) for x in out]

    before = reads()
    assert server.sql("SELECT count(*) AS n FROM metric_chunks WHERE codec <> 0")[0]["n"] == 0
    with runstream.Client(server.target) as client:
        client.update_run(run_id, status="FINISHED")
    server.wait_compacted(run_id)
    after = reads()
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        assert b == a, (i, b[:300], a[:300])

    shown = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "admin", "storage", "--url", server.target, "--format", "json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    figures = {row["figure"]: row["value"] for row in json.loads(shown)}
    assert figures["points"] == figures["points in compacted chunks"] == 24_000
    assert figures["points waiting for the compactor"] == 0 and figures["bytes on disk"] > 0
    assert 0 < figures["bytes in live rows (no free space, no index)"] < 24_000 * 10  # compressed
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10).read().decode()
    compacted = [line for line in scraped.splitlines() if line.startswith("runstream_points_compacted_total")]
    assert compacted and float(compacted[0].split()[-1]) >= 24_000, compacted


def _steps(server: Server, run_id: str) -> list[int]:
    return [int(s) for (_, _), (steps, _) in server.stored(run_id).items() for s in steps]


DAMAGE = {  # key -> how its compacted chunk is damaged
    "cut": "vals = substring(vals FROM 1 FOR 12)",
    "bit": "steps = set_byte(steps, 30, get_byte(steps, 30) # 2)",  # one bit in a page
    "sketch": "sketch = substring(sketch FROM 1 FOR 15)",
}


def test_a_damaged_compacted_chunk_is_named_and_harms_nothing_else(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server("--compact-delay", "0")
    keys = [*DAMAGE, "fine"]
    with runstream.Client(server.target) as client:
        run_id = client.create_run("damage").run_id
        steps = np.arange(3_000)
        data = wire.encode(run_id, "w", 1, keys, np.repeat(np.arange(len(keys)), 3_000), np.tile(steps, len(keys)),
                           None, np.tile(steps * 0.5, len(keys)))  # fmt: skip
        assert raw_log(client, data).code == 0
        assert server.wait_points(run_id, 3_000 * len(keys)) == 3_000 * len(keys)
        client.update_run(run_id, status="FINISHED")
        server.wait_compacted(run_id)
        for key, damage in DAMAGE.items():
            server.sql(
                f"UPDATE metric_chunks SET {damage} WHERE series_id = "
                "(SELECT series_id FROM metric_series WHERE run_id = $1 AND key = $2)",
                run_id,
                key,
            )
        with runstream.QueryClient(server.target) as q:
            for key in DAMAGE:
                for max_points in (100_000, 10):  # the points, and buckets (from the sketch)
                    try:
                        got = q.get_metric_history(run_id, key, max_points=max_points)
                    except runstream.DataLoss as exc:  # named: a person knows what to restore
                        assert f"metric {key!r} of run {run_id} (writer 'w')" in str(exc), exc
                        continue
                    # what is read from damaged storage is never other numbers
                    assert max_points == 10 and key != "sketch" and got.total_points == 3_000, (key, max_points)
            assert q.get_metric_history(run_id, "fine", max_points=100_000).value.tolist() == (steps * 0.5).tolist()
        mlflow = urllib.request.Request(
            f"http://127.0.0.1:{server.http_port}/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=bit"
        )
        with pytest.raises(urllib.error.HTTPError) as http_error:
            urllib.request.urlopen(mlflow, timeout=10)
        assert json.loads(http_error.value.read())["error_code"] == "DATA_LOSS"
        # More points for the damaged series: the compactor would merge them with the damaged
        # chunk, so it leaves the series as it is and says so; the new points stay readable,
        # and the other series are compacted all the same.
        more = wire.encode(run_id, "w", 2, ["cut", "fine"], np.repeat([0, 1], 10), np.tile(np.arange(3_000, 3_010), 2),
                           None, np.ones(20))  # fmt: skip
        assert raw_log(client, more).code == 0
        assert server.wait_points(run_id, 3_000 * len(keys) + 20) == 3_000 * len(keys) + 20
    deadline = time.monotonic() + 30
    while not any("left as it is" in line for line in server.output) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)  # a compactor that crash-looped or gave up on every series would show by now
    assert sum("left as it is" in line for line in server.output) == 1, "".join(server.output[-20:])
    ingest = server.sql(
        "SELECT s.key, sum(c.n) AS n FROM metric_chunks c JOIN metric_series s USING (series_id) "
        "WHERE c.codec = 0 GROUP BY s.key"
    )
    assert {r["key"]: r["n"] for r in ingest} == {"cut": 10}  # kept, not dropped; "fine" compacted
    assert "Traceback" not in "".join(server.output)
    assert "exited with code" not in "".join(server.output)


def test_steps_at_the_ends_of_int64_are_compacted_and_counted(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server("--compact-delay", "0")
    layouts = {  # key -> one writer's steps
        "nanoseconds": np.array([0, 1_700_000_000_000_000_000], np.int64),  # a time stamp used as the step
        "lowest": np.arange(-(2**63), -(2**63) + 4_001, dtype=np.int64),
        "both ends": np.array([*range(50), 2**63 - 1], np.int64),
    }
    with runstream.Client(server.target) as client:
        run_id = client.create_run("extremes").run_id
        seq = 0
        for key, steps in layouts.items():
            for writer in ("a", "b"):
                seq += 1
                data = wire.encode(run_id, writer, seq, [key], np.zeros(len(steps)), steps, None, np.sin(steps / 7.0))
                assert raw_log(client, data).code == 0
        total = 2 * sum(len(s) for s in layouts.values())
        assert server.wait_points(run_id, total) == total

        def reads() -> list[str]:
            out = []
            with runstream.QueryClient(server.target) as q:
                for key, steps in layouts.items():
                    for max_points in (1, 2, 3, 10, 100, 200_000):
                        h = q.get_metric_history(run_id, key, max_points=max_points)
                        assert h.total_points == 2 * len(steps), (key, max_points)
                        counted = int(np.sum(h.buckets["count"])) if h.downsampled else len(h.step)
                        assert counted == 2 * len(steps) and (
                            not h.downsampled or len(h.buckets["count"]) <= max_points
                        )
                        out.append(repr(h))
            return out

        before = reads()
        client.update_run(run_id, status="FINISHED")
    server.wait_compacted(run_id)
    assert reads() == before
    assert "Traceback" not in "".join(server.output)


def test_late_batches_into_an_ended_run_rewrite_its_last_chunk_once_per_delay(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server("--compact-delay", "3")
    with runstream.Client(server.target) as client:
        run_id = client.create_run("late").run_id
        steps = np.arange(20_000)
        assert raw_log(client, wire.encode(run_id, "w", 1, ["x"], np.zeros(20_000), steps, None, steps * 1.0)).code == 0
        assert server.wait_points(run_id, 20_000) == 20_000
        client.update_run(run_id, status="FINISHED")
        server.wait_compacted(run_id)
        for seq in range(2, 42):  # 40 late batches of 10 points, as a spool or MLflow's client sends them
            late = np.arange(20_000 + 10 * seq, 20_010 + 10 * seq)
            assert raw_log(client, wire.encode(run_id, "w", seq, ["x"], np.zeros(10), late, None, late * 1.0)).code == 0
        assert server.wait_points(run_id, 20_400) == 20_400
    server.wait_compacted(run_id)
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10).read().decode()
    line = next(x for x in scraped.splitlines() if x.startswith("runstream_points_compacted_total"))
    # The 20,000 once, then the 20,400 about once per delay: not 40 rewrites of the whole chunk.
    # Usually once (40,400 in all); on a loaded machine the late batches' loads can spread over
    # several delays (5 rewrites seen twice on 2026-12-02, once in CI), so the bound allows 8.
    assert float(line.split()[-1]) <= 20_000 + 8 * 20_400, line


def test_a_compactor_whose_connections_are_killed_only_waits(make_server) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL connections of the compactor killed in a loop while it works (a failover, a
    pooler restart): it retries, loses and doubles nothing, and stays up."""
    server = make_server("--compactors", "0")
    with runstream.Client(server.target) as client:
        run_id = client.create_run("resets").run_id
        steps = np.arange(20_000)
        for seq, w in enumerate(("a", "b", "c"), start=1):
            data = wire.encode(run_id, w, seq, ["x", "y"], np.repeat([0, 1], 20_000), np.tile(steps, 2), None,
                               np.tile(steps * 0.25, 2))  # fmt: skip
            assert raw_log(client, data).code == 0
        assert server.wait_points(run_id, 120_000) == 120_000
        client.update_run(run_id, status="FINISHED")
    # each swap waits 0.3 s inside its transaction: the kills land in the compactor's work
    slow = {"RUNSTREAM_FAILPOINT": "compactor.after_swap:0.3"}
    compactor = make_server("--role", "compact", "--compact-delay", "0", like=server, env=slow)
    db = server.db_url.rsplit("/", 1)[1]
    killed = 0

    async def kill_for(seconds: float) -> None:
        nonlocal killed
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                rows = await admin.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = $1 AND application_name = 'runstream-compact'",
                    db,
                )
                killed += sum(1 for r in rows if r[0])
                await asyncio.sleep(random.uniform(0.02, 0.2))
        finally:
            await admin.close()

    asyncio.run(kill_for(6))
    server.wait_compacted(run_id)
    assert killed >= 3, killed
    assert any("PostgreSQL is away" in line for line in compactor.output), "".join(compactor.output[-10:])
    stored = server.stored(run_id)
    assert len(stored) == 6 and all(s.tolist() == list(range(20_000)) for s, _ in stored.values())
    assert compactor.proc is not None and compactor.proc.poll() is None  # still up
    assert "Traceback" not in "".join(compactor.output)
    compactor.stop()
