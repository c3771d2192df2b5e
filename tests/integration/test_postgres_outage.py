"""PostgreSQL away (a private cluster, stopped under load): ingest keeps taking the batches of
runs it knows into Redis, refuses unknown runs with UNAVAILABLE, and says SERVING for the
TrackingService; once PostgreSQL is back every point lands exactly once, with no client error.

The outage lasts RUNSTREAM_TEST_PG_OUTAGE_S seconds: 30 in `make test`, the issue's 5 minutes
with RUNSTREAM_TEST_SOAK=1 (see docs/operating.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

import runstream
from tests.conftest import raw_log, soak
from tests.integration.test_dead_letters import _batch
from tests.integration.test_operations import NOT_SERVING, SERVING, _health, wait_for

OUTAGE_S = float(os.environ.get("RUNSTREAM_TEST_PG_OUTAGE_S", soak(30, 300)))
# The private cluster is started and stopped by a helper process: pgserver forks to run
# PostgreSQL's tools as its own user, and this process has gRPC threads streaming.
PG_HELPER = """
import sys
from pathlib import Path
import pgserver
pgdata = Path(sys.argv[2])
if sys.argv[1] == "start":
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    if not server.psql("SELECT 1 FROM pg_database WHERE datname = 'runstream';").count("(1 row)"):
        server.psql("CREATE DATABASE runstream;")
    print(server.get_uri("runstream"))
else:
    pgserver.get_server(pgdata, cleanup_mode="stop").cleanup()
"""


def _pg(action: str, pgdata: Path) -> str:
    done = subprocess.run([sys.executable, "-c", PG_HELPER, action, str(pgdata)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1] if action == "start" else ""


KEYS = [f"k{i}" for i in range(10)]


@pytest.mark.timeout(OUTAGE_S + 300)
def test_a_postgresql_outage_is_invisible_to_training_jobs(make_server, tmp_path: Path) -> None:
    pgdata = tmp_path / "pg"
    pg_url = _pg("start", pgdata)
    server = make_server(start=False)
    made_db = server.db_url  # the factory's own database, which it drops at the end
    try:
        server.args[server.args.index("--postgres-url") + 1] = pg_url
        server.db_url = pg_url
        server.start()
        with runstream.Client(server.target) as client:
            run = client.start_run("outage", writer_id="sdk", record_source=False)
            stop = threading.Event()
            steps = [0]

            def train() -> None:  # a training loop that never looks at the server
                while not stop.is_set():
                    run.log_metrics({k: float(steps[0]) for k in KEYS}, step=steps[0])
                    steps[0] += 1
                    time.sleep(0.002)

            trainer = threading.Thread(target=train)
            trainer.start()
            time.sleep(2)
            _pg("stop", pgdata)
            down_at = time.monotonic()
            wait_for(lambda: _health(server.target, "runstream.v1.QueryService") == NOT_SERVING, what="queries down")
            assert _health(server.target, "runstream.v1.TrackingService") == SERVING
            assert _health(server.target) == SERVING  # the process still takes metrics

            seq = 1
            while time.monotonic() - down_at < OUTAGE_S:
                assert raw_log(client, _batch(run.run_id, "raw", seq)).code == 0  # a known run: taken
                seq += 1
                time.sleep(1)
            with pytest.raises(grpc.RpcError) as err:
                raw_log(client, _batch(str(uuid.uuid4()), "raw", 1))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            during = steps[0]

            _pg("start", pgdata)
            wait_for(lambda: _health(server.target, "runstream.v1.QueryService") == SERVING, what="queries back")
            stop.set()
            trainer.join()
            run.flush(120)  # nothing refused: no exception
            total = steps[0] * len(KEYS) + (seq - 1) * 100
            assert server.wait_points(run.run_id, total, timeout=180) == total
            stored = server.stored(run.run_id)
            for key in KEYS:
                got, values = stored[(key, "sdk")]
                assert got.tolist() == list(range(steps[0])) and values.tolist() == [float(s) for s in range(steps[0])]
            assert stored[("loss", "raw")][0].tolist() == list(range(100, seq * 100))
            assert during > 1_000  # the job kept logging through the outage
            run.end()
        assert server.stop() == 0
    finally:
        server.stop()
        server.db_url = made_db
        _pg("stop", pgdata)
