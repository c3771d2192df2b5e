"""PostgreSQL connections killed under load (what a failover, a pooler restart or an idle
timeout does): `pg_terminate_backend` on every connection of the server's database in a loop
while four writers log. Every acknowledged point is stored exactly once, nothing is
dead-lettered (a lost connection is never the entry's fault), and no call fails as INTERNAL
(issue 33, item 1)."""

from __future__ import annotations

import asyncio
import threading
import time

import asyncpg
import urllib3

import runstream
from tests.conftest import PG_ADMIN_URL, soak
from tests.integration.test_faults import KEYS, _train

# Short form: faster than the 0.3 s of the report, so that kills land inside COPYs and retries
# within seconds of test time. Soak (RUNSTREAM_TEST_SOAK=1): the report's every 0.3 s, and
# 250,000 points per writer over a longer loop.
KILL_EVERY_S = soak(0.05, 0.3)
STEPS = soak(60_000, 250_000 // len(KEYS))
WRITERS = ["w0", "w1", "w2", "w3"]


def _kill_connections_until(db: str, stop: threading.Event, killed: list[int]) -> None:
    async def loop() -> None:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            while not stop.is_set():
                rows = await admin.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    db,
                )
                killed[0] += sum(1 for r in rows if r[0])
                await asyncio.sleep(KILL_EVERY_S)
        finally:
            await admin.close()

    asyncio.run(loop())


def test_connections_killed_in_a_loop_lose_double_and_dead_letter_nothing(make_server) -> None:
    server = make_server("--loaders", "2")
    db = server.db_url.rsplit("/", 1)[1].split("?")[0]
    with runstream.Client(server.target) as client:
        runs = [client.start_run("resets", f"run {w}", writer_id=w, record_source=False) for w in WRITERS]
        stop, killed = threading.Event(), [0]
        killer = threading.Thread(target=_kill_connections_until, args=(db, stop, killed))
        trainers = [_train(run, STEPS, pause=0.002) for run in runs]
        killer.start()
        try:
            for trainer in trainers:
                trainer.join()
            for run in runs:
                run.flush(120)  # acknowledged: in Redis
            time.sleep(2)  # go on killing while the loaders catch up
        finally:
            stop.set()
            killer.join()
        assert killed[0] > 50, killed  # the fault really happened, many times
        for run, writer in zip(runs, WRITERS, strict=True):
            assert server.wait_points(run.run_id, STEPS * len(KEYS), timeout=180) == STEPS * len(KEYS)
            stored = server.stored(run.run_id)
            for key in KEYS:
                got, values = stored[(key, writer)]
                assert got.tolist() == list(range(STEPS)), (writer, key)
                assert values.tolist() == [float(s) for s in range(STEPS)]
            run.end()
        # What waits on the loaders' notifications listens anew: WaitCommitted (flush(visible=True),
        # MLflow's log-batch) and live tails work again at once, not only until the next restart.
        after = client.start_run("resets", "after", writer_id="after", record_source=False)
        after.log_metrics({"loss": 1.0}, step=0)
        after.flush(60, visible=True)
        reply = urllib3.request(
            "POST",
            f"http://127.0.0.1:{server.http_port}/api/2.0/mlflow/runs/log-batch",
            json={"run_id": after.run_id, "metrics": [{"key": "m", "value": 1.0, "timestamp": 1, "step": 1}]},
            timeout=60,
        )
        assert reply.status == 200, reply.data
        with runstream.QueryClient(server.target) as query:
            tail = query.tail_metrics([after.run_id], ["loss"], from_step=0)
            assert next(iter(tail)).step.tolist() == [0]
            tail.close()
        after.end()
    output = "".join(server.output)
    assert server.dead_letters() == 0, output[-3000:]
    assert "Traceback" not in output and " ERROR " not in output, output[-3000:]
