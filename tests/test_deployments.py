"""Two deployments (two PostgreSQL databases) on one Redis and prefix: the second is refused at
start in one line naming both, the first goes on storing everything it acknowledges, and a
loader never takes an entry of another deployment (issue 33, item 4)."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

import runstream
from tests.conftest import raw_log
from tests.test_dead_letters import POINTS, _batch, _metric
from tests.test_faults import KEYS, _exactly, _train


def test_a_second_deployment_on_the_same_redis_prefix_is_refused_in_one_line(make_server) -> None:
    first = make_server()
    second = make_server(start=False)  # its own database...
    second.args[second.args.index("--redis-prefix") + 1] = first.prefix  # ...and the first one's keyspace
    with pytest.raises(RuntimeError, match="server did not start"):
        second.start(timeout=60)
    assert second.proc is not None and second.proc.wait(30) != 0
    said = [line for line in second.output if "belong to deployment" in line]
    assert len(said) == 1, second.output
    line = said[0]
    first_db, second_db = (s.db_url.rsplit("/", 1)[1] for s in (first, second))
    assert first_db in line and second_db in line and f"{first.prefix}:*" in line and "--redis-prefix" in line
    assert "Traceback" not in "".join(second.output)

    # The first deployment lost nothing to it.
    with runstream.Client(first.target) as client:
        run = client.start_run("deployments", "first", writer_id="w", record_source=False)
        _train(run, 20_000).join()
        run.flush(60)
        _exactly(first, run.run_id, "w", 20_000)
        run.end()
    assert redis.Redis.from_url(first.redis_url).xlen(f"{first.prefix}:dead-letters") == 0

    # The same deployment (its own database) starts again on its keyspace, e.g. after a restart.
    first.stop()
    assert make_server(like=first).proc is not None


def test_a_loader_never_takes_an_entry_of_another_deployment(server) -> None:
    r = redis.Redis.from_url(server.redis_url)
    with runstream.Client(server.target) as client:
        run_id = client.create_run("deployments", "foreign").run_id
        # An entry of a run this database has, but appended by another deployment (as if the
        # keyspace's binding had been lost while both ran): this server must leave it alone.
        stream = f"{server.prefix}:metrics:0"
        other = uuid.uuid4()
        foreign_id = r.xadd(stream, {b"b": _batch(run_id, "other", 1), b"t": 1, b"d": other.bytes})
        assert raw_log(client, _batch(run_id, "own", 1)).code == 0
        assert server.wait_points(run_id, POINTS, timeout=60) == POINTS
        time.sleep(3)  # several claim rounds (--claim-idle-ms 1000): the foreign entry is still not taken
        assert server.wait_points(run_id, POINTS, timeout=1) == POINTS  # only the own writer's points
        assert set(server.stored(run_id)) == {("loss", "own")}
        assert r.xlen(f"{server.prefix}:dead-letters") == 0
        left = r.xrange(stream, foreign_id, foreign_id)
        assert left and left[0][1][b"d"] == other.bytes  # still there, for its owner
        assert _metric(server, "runstream_entries_foreign_total") >= 1
        assert any("for another deployment" in line for line in server.output)
        # The keyspace names its deployment: this database's.
        bound = r.hgetall(f"{server.prefix}:deployment")
        assert bound[b"id"].decode() == str(server.sql("SELECT deployment_id FROM deployment")[0][0])
        run = client.attach(run_id, writer_id="sdk")
        _train(run, 5_000).join()
        run.flush(60)
        assert server.wait_points(run_id, POINTS + 5_000 * len(KEYS), timeout=60) == POINTS + 5_000 * len(KEYS)
        stored = server.stored(run_id)
        assert all(stored[(k, "sdk")][0].tolist() == list(range(5_000)) for k in KEYS)
