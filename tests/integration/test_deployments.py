"""Two deployments (two PostgreSQL databases) on one Redis and prefix: the second is refused at
start in one line naming both, the first goes on storing everything it acknowledges, and a
loader never takes an entry of another deployment (issue 33, item 4)."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

import runstream
from runstream.server.streams.keys import Keys
from tests.conftest import raw_log
from tests.integration.test_dead_letters import POINTS, _batch, _metric
from tests.integration.test_faults import KEYS, _exactly, _train


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
    assert first.dead_letters() == 0

    # The same deployment (its own database) starts again on its keyspace, e.g. after a restart.
    first.stop()
    assert make_server(like=first).proc is not None


def test_a_loader_never_takes_an_entry_of_another_deployment(server) -> None:
    r = redis.Redis.from_url(server.redis_url)
    with runstream.Client(server.target) as client:
        run_id = client.create_run("deployments", "foreign").run_id
        # An entry of a run this database has, but appended by another deployment (as if the
        # keyspace's binding had been lost while both ran): this server must leave it alone.
        stream = Keys(server.prefix).stream(0)
        other = uuid.uuid4()
        foreign_id = r.xadd(stream, {b"b": _batch(run_id, "other", 1), b"t": 1, b"d": other.bytes})
        assert raw_log(client, _batch(run_id, "own", 1)).code == 0
        assert server.wait_points(run_id, POINTS, timeout=60) == POINTS
        time.sleep(3)  # several claim rounds (--claim-idle-ms 1000): the foreign entry is still not taken
        assert server.wait_points(run_id, POINTS, timeout=1) == POINTS  # only the own writer's points
        assert set(server.stored(run_id)) == {("loss", "own")}
        assert server.dead_letters() == 0
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


def test_a_copy_of_a_deployments_database_is_refused_until_told_what_it_is(make_server) -> None:
    """A pg_dump copy (a staging clone) carries its deployment's id: on the original's Redis
    keyspace it would take the original's acknowledged batches. It is refused at start; told
    `new` it becomes a deployment of its own (and still needs a keyspace of its own); told
    `adopt` it replaces the original, which is then refused."""
    from tests.conftest import PG_ADMIN_URL, sql

    first = make_server()
    with runstream.Client(first.target) as client:
        client.create_run("copied", "before the copy")
    first.stop()
    copy = make_server(start=False)
    copy_db = copy.db_url.rsplit("/", 1)[1]
    first_db = first.db_url.rsplit("/", 1)[1]
    sql(PG_ADMIN_URL, f"DROP DATABASE {copy_db}")
    sql(PG_ADMIN_URL, f"CREATE DATABASE {copy_db} TEMPLATE {first_db}")  # what pg_dump | psql makes
    restarted = make_server(like=first)  # the original, on its keyspace
    copy.args[copy.args.index("--redis-prefix") + 1] = copy.prefix = first.prefix
    with pytest.raises(RuntimeError, match="server did not start"):
        copy.start()
    said = "".join(copy.output)
    assert "is a copy or a move of deployment" in said and "--database-moved" in said, said

    as_new = make_server("--database-moved", "new", like=copy, start=False)  # its own id, same keyspace
    with pytest.raises(RuntimeError, match="server did not start"):
        as_new.start()
    assert "belong to deployment" in "".join(as_new.output)
    own = make_server("--database-moved", "new", like=copy, start=False)
    own.args[own.args.index("--redis-prefix") + 1] = own.prefix = f"{first.prefix}-copy"
    own.start()  # a deployment of its own, on a keyspace of its own
    ids = {s.sql("SELECT deployment_id::text AS d FROM deployment")[0]["d"] for s in (restarted, own)}
    assert len(ids) == 2
    own.stop()
    restarted.stop()

    # A move (pg_upgrade, a new server): the moved database adopts the keyspace, and the old one
    # coming back is refused rather than sharing it.
    moved = make_server(start=False)
    moved_db = moved.db_url.rsplit("/", 1)[1]
    sql(PG_ADMIN_URL, f"DROP DATABASE {moved_db}")
    sql(PG_ADMIN_URL, f"CREATE DATABASE {moved_db} TEMPLATE {first_db}")
    moved.args[moved.args.index("--redis-prefix") + 1] = moved.prefix = first.prefix
    moved.args += ["--database-moved", "adopt"]
    moved.start()
    assert [r["name"] for r in moved.sql("SELECT name FROM runs")] == ["before the copy"]
    old = make_server(like=first, start=False)
    with pytest.raises(RuntimeError, match="server did not start"):
        old.start()
    assert "in another database" in "".join(old.output)
