"""runstream on a real Redis Cluster (3 masters, 3 replicas, tests/cluster.py): every shard's
keys in one hash slot and spread over the masters; every point stored exactly once through a
master SIGKILLed under load (with --redis-wait-replicas 1) and through a hash slot moved to
another master under load; dead letters listed and replayed per shard."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import runstream
from runstream.server.streams.keys import FIELD_BATCH, FIELD_RECEIVED_MS, Keys
from tests.cluster import LocalCluster
from tests.integration.test_dead_letters import POINTS, _batch, _cli
from tests.integration.test_faults import _exactly, _train

SHARDS = 6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    made = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield made
    made.stop()


def _on_cluster(make_server: Any, cluster: LocalCluster, *extra: str) -> Any:
    server = make_server("--shards", str(SHARDS), *extra, start=False)
    server.args[server.args.index("--redis-url") + 1] = cluster.url
    return server.start()


def _runs(client: runstream.Client, count: int) -> list[runstream.Run]:
    """Runs whose streams are on `count` different shards."""
    keys, runs, shards = Keys("x", SHARDS), [], set()
    while len(runs) < count:
        run = client.start_run("cluster", writer_id="w", record_source=False)
        if keys.shard_of(run.run_id) in shards:
            run.end()
            continue
        shards.add(keys.shard_of(run.run_id))
        runs.append(run)
    return runs


def test_a_server_on_a_cluster_spreads_its_shards_and_stores_every_point_once(
    make_server: Any, cluster: LocalCluster
) -> None:
    server = _on_cluster(make_server, cluster)
    keys = Keys(server.prefix, SHARDS)
    assert len({cluster.master_of(s) for s in keys.streams()}) >= 2  # the shards are not all on one master
    for shard in range(SHARDS):  # and each shard's keys share one slot
        assert cluster.master_of(keys.stream(shard)) == cluster.master_of(keys.dead_letters(shard))
    assert any("Redis Cluster 7" in line for line in server.output)
    steps = 20_000
    with runstream.Client(server.target) as client:
        runs = _runs(client, 3)
        trainers = [_train(run, steps) for run in runs]
        for trainer in trainers:
            trainer.join()
        for run in runs:
            run.end()
    for run in runs:
        _exactly(server, run.run_id, "w", steps)

    # A batch no loader can store is a dead letter of its own shard, listed and replayed there.
    run_id = runs[0].run_id
    shard = keys.shard_of(run_id)
    cluster.client().xadd(
        keys.stream(shard), {FIELD_BATCH: _batch(run_id, "p\x00nul", 1), FIELD_RECEIVED_MS: int(time.time() * 1000)}
    )
    deadline = time.monotonic() + 30
    while not (letters := _dead_letters(server)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(letters) == 1 and letters[0].id.startswith(f"{shard}/") and letters[0].stream == keys.stream(shard)
    assert cluster.client().xlen(keys.dead_letters(shard)) == 1
    assert _cli(server, "retry", letters[0].id).returncode == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (again := _dead_letters(server)) and again[0].id == letters[0].id:
        time.sleep(0.2)
    assert len(again) == 1 and again[0].id != letters[0].id  # replayed, refused again, kept again
    assert server.stop() == 0


def _every_point_once(server: Any, runs: list[runstream.Run], trainers: list[Any], steps: int) -> None:
    """The jobs finish, every point is acked (flush), and each is stored exactly once."""
    for trainer in trainers:
        trainer.join()
    for run in runs:
        run.flush(120)
    for run in runs:
        _exactly(server, run.run_id, "w", steps)
        run.end()


def _dead_letters(server: Any) -> list[Any]:
    with runstream.Client(server.target) as client:
        return client.admin.dead_letters()


def test_a_master_sigkilled_under_load_loses_and_doubles_nothing_acked(make_server: Any, cluster: LocalCluster) -> None:
    server = _on_cluster(make_server, cluster, "--redis-wait-replicas", "1", "--claim-idle-ms", "2000")
    keys = Keys(server.prefix, SHARDS)
    steps = 60_000
    with runstream.Client(server.target) as client:
        runs = _runs(client, 3)
        victim_stream = keys.stream_of(runs[0].run_id)
        victim = cluster.master_of(victim_stream)
        trainers = [_train(run, steps, pause=0.004) for run in runs]
        time.sleep(2)
        cluster.kill(victim)
        successor = cluster.wait_failover(victim, victim_stream)
        assert successor != victim
        # Its shard has no replica now, so no append there can be confirmed by one (WAIT 1):
        # acks wait (the senders retry) until the dead node is back, as the new master's replica.
        time.sleep(2)
        assert cluster.replicas_of(successor) == 0
        cluster.restart(victim)
        LocalCluster.wait_until(lambda: cluster.replicas_of(successor) == 1, "the old master to rejoin as a replica")
        _every_point_once(server, runs, trainers, steps)
    assert any("appends to" in line and "refused" in line for line in server.output)
    assert server.stop() == 0


def test_a_slot_moved_to_another_master_under_load_loses_and_doubles_nothing(
    make_server: Any, cluster: LocalCluster
) -> None:
    server = _on_cluster(make_server, cluster)
    keys = Keys(server.prefix, SHARDS)
    steps = 40_000
    with runstream.Client(server.target) as client:
        runs = _runs(client, 2)
        moving = keys.stream_of(runs[0].run_id)
        source = cluster.master_of(moving)
        target = next(p for p in cluster.masters_now() if p != source)
        trainers = [_train(run, steps, pause=0.004) for run in runs]
        time.sleep(1.5)
        cluster.migrate_slot(moving, target)
        assert cluster.master_of(moving) == target
        _every_point_once(server, runs, trainers, steps)
    assert server.stop() == 0


def test_entries_under_old_key_names_or_of_shards_no_longer_used_are_moved_and_loaded_once(make_server: Any) -> None:
    """Before shards had hash tags, a shard's stream was <prefix>:metrics:<n> and the dead
    letters <prefix>:dead-letters; a deployment that lowers --shards leaves streams and dead
    letters of shards it no longer has. What a loader finds there at start is loaded, and kept."""
    first = make_server()
    with runstream.Client(first.target) as client:
        run_id = client.create_run("legacy", "upgrade").run_id
    assert first.stop() == 0
    keys = Keys(first.prefix)  # 4 shards
    r = redis.Redis.from_url(first.redis_url)
    old, beyond = keys.legacy_streams()[keys.shard_of(run_id)], f"{first.prefix}:metrics:6"
    gone = Keys(first.prefix, 8)
    now = int(time.time() * 1000)
    r.xgroup_create(old, "loaders", id="0", mkstream=True)
    for seq, where in ((1, old), (2, old), (3, old), (4, beyond), (5, gone.stream(7)), (6, gone.stream(5))):
        r.xadd(where, {FIELD_BATCH: _batch(run_id, "old", seq), FIELD_RECEIVED_MS: now})
    r.xreadgroup("loaders", "an-old-loader", {old: ">"}, count=1)  # one was pending when it stopped
    r.xadd(keys.legacy_dead_letters, {FIELD_BATCH: _batch(run_id, "p\x00nul", 1), b"reason": b"old"})
    r.xadd(gone.dead_letters(6), {FIELD_BATCH: _batch(run_id, "p\x00nul", 2), b"reason": b"gone"})
    r.set(f"{first.prefix}:metrics:x", "not a shard: left alone")
    other = f"{first.prefix}x:metrics:0"  # another prefix that starts with this one: left alone
    r.xadd(other, {FIELD_BATCH: _batch(run_id, "other", 1), FIELD_RECEIVED_MS: now})

    server = make_server(like=first)
    try:
        assert server.wait_points(run_id, 6 * POINTS, timeout=60) == 6 * POINTS
        steps, _ = server.stored(run_id)[("loss", "old")]
        assert sorted(steps.tolist()) == list(range(POINTS, 7 * POINTS))  # each once
        strays = [old, beyond, gone.stream(7), gone.stream(5), keys.legacy_dead_letters, gone.dead_letters(6)]
        assert sum(r.xlen(k) for k in strays if r.exists(k)) == 0
        letters = _dead_letters(server)
        assert sorted(d.reason for d in letters) == ["gone", "old"]
        assert all(d.id.startswith(f"{keys.shard_of(run_id)}/") for d in letters)  # the shard of their run
        moved = "moved 8 stream entries from keys of an earlier version or of shards no longer used"
        assert any(moved in line for line in server.output)
        assert r.xlen(other) == 1 and r.get(f"{first.prefix}:metrics:x") == b"not a shard: left alone"
    finally:
        r.delete(other, f"{first.prefix}:metrics:x")
