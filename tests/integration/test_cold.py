"""The cold tier: runs that ended move their points to one object in the artifact store (local
and S3 through moto's server), and every read is the same before and after; a mover killed
anywhere, a store that is down, late batches, a damaged or missing object, a run deleted while
cold."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import numpy as np
import pytest

import runstream
from runstream.server.storage import archive, codec
from runstream.wire import batch as wire
from runstream.wire.proto import query_pb2 as qpb
from runstream.wire.proto import query_pb2_grpc
from tests.conftest import PG_ADMIN_URL, S3, S3_CREDENTIALS, Server, free_port, raw_log, start_moto

WRITERS = 2
POINTS = 12_000


def _store_args(kind: str, s3: S3 | None) -> tuple[list[str], dict[str, str] | None, str]:
    if kind == "local" or s3 is None:
        return [], None, ""
    bucket = s3.new_bucket()
    return ["--artifacts", f"s3://{bucket}/team", "--s3-endpoint-url", s3.endpoint], S3_CREDENTIALS, bucket


class Cold:
    """A server that compacts but never moves (`--cold-after 0`), and movers started beside it."""

    def __init__(self, make_server: Any, kind: str, s3: S3 | None) -> None:
        self.make_server, self.kind, self.s3 = make_server, kind, s3
        self.args, self.env, self.bucket = _store_args(kind, s3)
        self.server: Server = make_server("--compact-delay", "0", "--cold-after", "0", *self.args, env=self.env)

    def mover(self, *extra: str, env: dict[str, str] | None = None) -> Server:
        return self.make_server(
            "--role", "compact", "--compact-delay", "0", "--cold-after", "1", *self.args, *extra,
            like=self.server, env={**(self.env or {}), **(env or {})},
        )  # fmt: skip

    def objects(self) -> dict[str, bytes]:
        if self.s3 is None:
            root = self.server.artifacts / "objects"
            return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.rscold")}
        listing = self.s3.client.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return {
            o["Key"].removeprefix("team/"): self.s3.client.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read()
            for o in listing
            if o["Key"].endswith(".rscold")
        }

    def wait_cold(self, run_id: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.server.sql(
                "SELECT count(*) FILTER (WHERE c.cold_object IS NULL) AS hot, count(*) AS every FROM metric_chunks c "
                "JOIN metric_series s USING (series_id) WHERE s.run_id = $1",
                run_id,
            )[0]
            if row["every"] and not row["hot"]:
                return
            time.sleep(0.2)
        raise AssertionError(f"run {run_id} is not cold after {timeout:.0f} s")


def _log(server: Server, run_id: str, first_seq: int = 1, offset: int = 0, seed: int = 5) -> None:
    rng = np.random.default_rng(seed)
    with runstream.Client(server.target) as client:
        for w in range(WRITERS):
            steps = np.sort(rng.choice(30_000, POINTS, replace=False)) + offset
            values = rng.standard_normal(POINTS)
            values[[5, 500, 5000]] = [np.nan, np.inf, -np.inf]
            for seq, lo in enumerate(range(0, POINTS, 3_000), start=first_seq):
                part = slice(lo, lo + 3_000)
                data = wire.encode(run_id, f"w{w}", seq, ["x"], np.zeros(3_000), steps[part], None, values[part])
                assert raw_log(client, data).code == 0


def _ended_run(cold: Cold) -> str:
    server = cold.server
    with runstream.Client(server.target) as client:
        run_id = client.create_run("cold").run_id
        _log(server, run_id)
        assert server.wait_points(run_id, WRITERS * POINTS) == WRITERS * POINTS
        client.update_run(run_id, status="FINISHED")
    server.wait_compacted(run_id)
    return run_id


def _reads(server: Server, run_id: str) -> list[str]:
    """Every way to read a run's points: histories (windows, bucket counts, times, by writer),
    whole series, comparisons, a tail from a step, and MLflow's get-history."""
    with runstream.QueryClient(server.target) as q:
        out: list[Any] = [
            q.get_metric_history(run_id, "x", max_points=m, min_step=lo, max_step=hi)
            for m in (1, 7, 300, 1000, 200_000)
            for lo, hi in ((None, None), (1234, 25_678), (10, 40), (29_990, 10**9))
        ]
    with grpc.insecure_channel(server.target) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        req = qpb.GetMetricHistoryRequest(run_id=run_id, key="x", max_points=500, with_time=True, by_writer=True)
        out.append(stub.GetMetricHistory(req, timeout=30))
    with runstream.QueryClient(server.target) as q:
        out += [
            [
                (p.writer, p.step.tolist(), p.value.tolist(), p.timestamp_ms.tolist())
                for p in q.read_metrics(run_id, "x")
            ]
        ]
        out += [q.compare_runs([run_id], ["x"], max_points=50).series["x"]]
        tail = q.tail_metrics([run_id], ["x"], from_step=29_000)
        got = []
        for piece in tail:
            got += piece.step.tolist()
            if len(got) >= sum(int(s) >= 29_000 for s in _all_steps(server, run_id)):
                break
        out.append(sorted(got))
    url = f"http://127.0.0.1:{server.http_port}/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=x"
    out.append(json.loads(urllib.request.urlopen(url, timeout=30).read()))
    return [repr(x) for x in out]


def _all_steps(server: Server, run_id: str) -> list[int]:
    with runstream.QueryClient(server.target) as q:
        return [int(s) for p in q.read_metrics(run_id, "x") for s in p.step]


def _same(before: list[str], after: list[str]) -> None:
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        assert b == a, (i, b[:300], a[:300])


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_every_read_is_the_same_hot_and_cold(make_server: Any, kind: str, request: pytest.FixtureRequest) -> None:
    cold = Cold(make_server, kind, request.getfixturevalue("moto_s3") if kind == "s3" else None)
    server = cold.server
    run_id = _ended_run(cold)
    before = _reads(server, run_id)
    assert not cold.objects()
    cold.mover()
    cold.wait_cold(run_id)
    _same(before, _reads(server, run_id))

    # The points left PostgreSQL: the rows keep summaries and sketches, their columns are NULL.
    (row,) = server.sql(
        "SELECT count(*) FILTER (WHERE steps IS NOT NULL OR timestamps IS NOT NULL OR vals IS NOT NULL) AS held, "
        "count(*) FILTER (WHERE sketch IS NULL) AS unsketched FROM metric_chunks"
    )
    assert row["held"] == 0 and row["unsketched"] == 0
    # One object for the run, in the documented format that a tool reads without the server.
    ((key, data),) = cold.objects().items()
    assert key.startswith(f"runs/{run_id}/metrics/")
    footer = archive.read_footer(data)
    assert footer["format"] == "runstream-cold" and footer["run_id"] == run_id
    by_writer = {}
    for series in footer["series"]:
        parts = []
        for c in series["chunks"]:
            s, t, v = c["sizes"]
            at = c["offset"]
            parts.append(
                codec.decode(codec.PCO, data[at : at + s], data[at + s : at + s + t], data[at + s + t : at + s + t + v])
            )
        by_writer[series["writer_id"]] = np.concatenate([p[0] for p in parts]).tolist()
    with runstream.QueryClient(server.target) as q:
        assert by_writer == {p.writer: p.step.tolist() for p in q.read_metrics(run_id, "x")}

    shown = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "admin", "storage", "--url", server.target, "--format", "json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    figures = {r["figure"]: r["value"] for r in json.loads(shown)}
    assert figures["points in the cold tier"] == WRITERS * POINTS
    assert figures["cold objects"] == 1 and figures["bytes of cold objects"] == len(data)


def test_late_batches_move_a_cold_run_again_and_its_old_object_goes(make_server: Any) -> None:
    cold = Cold(make_server, "local", None)
    server = cold.server
    run_id = _ended_run(cold)
    cold.mover()
    cold.wait_cold(run_id)
    (first,) = cold.objects()
    with runstream.Client(server.target) as client:
        _log(server, run_id, first_seq=100, offset=40_000, seed=6)  # late batches, after the old steps
        assert server.wait_points(run_id, 2 * WRITERS * POINTS) == 2 * WRITERS * POINTS
        client.update_run(run_id, status="FINISHED")
    server.wait_compacted(run_id)
    cold.wait_cold(run_id)
    deadline = time.monotonic() + 60
    while first in cold.objects() and time.monotonic() < deadline:
        time.sleep(0.3)
    (second,) = cold.objects()
    assert second != first
    with runstream.QueryClient(server.target) as q:
        read = list(q.read_metrics(run_id, "x"))
    assert sorted(p.writer for p in read) == [f"w{w}" for w in range(WRITERS)]
    for p in read:  # every point once: the first batches and the late ones
        assert len(np.unique(p.step)) == len(p.step) == 2 * POINTS
    assert [tuple(r) for r in server.sql("SELECT state FROM cold_objects")] == [("live",)]


def test_a_mover_killed_anywhere_loses_nothing_and_leaves_nothing(make_server: Any) -> None:
    cold = Cold(make_server, "local", None)
    server = cold.server
    run_id = _ended_run(cold)
    before = _reads(server, run_id)
    for point in ("cold.before_settle", "cold.after_settle", None, None):
        env = {"RUNSTREAM_FAILPOINT": f"{point}:600"} if point else None
        mover = cold.mover(env=env)
        if point:
            mover.wait_output(f"failpoint {point}: pausing")
        else:
            time.sleep(0.3)
        mover.stop(signal.SIGKILL)
        _same(before, _reads(server, run_id))
    cold.mover()
    cold.wait_cold(run_id)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(cold.objects()) != 1:
        time.sleep(0.3)
    assert len(cold.objects()) == 1  # what killed movers wrote is deleted
    assert [tuple(r) for r in server.sql("SELECT state FROM cold_objects")] == [("live",)]
    _same(before, _reads(server, run_id))


def test_a_store_that_is_down_delays_moves_and_loses_nothing(make_server: Any) -> None:
    port = free_port()
    moto, s3 = start_moto(port)  # its own: this test stops it
    cold = Cold(make_server, "s3", s3)
    server = cold.server
    run_id = _ended_run(cold)
    before = _reads(server, run_id)
    moto.kill()
    moto.wait()
    try:
        mover = cold.mover()
        mover.wait_output("cold tier:")
        time.sleep(3)
        assert server.sql("SELECT count(*) AS n FROM metric_chunks WHERE cold_object IS NOT NULL")[0]["n"] == 0
        said = "".join(mover.output)
        assert "artifact store" in said and "PostgreSQL is away" not in said, said  # names the store, not PG
        assert server.sql("SELECT count(*) AS n FROM cold_objects")[0]["n"] <= 1  # waits, does not retry at once
        mover.stop()
        moto, s3 = start_moto(port)  # back, empty: the points still are in PostgreSQL
        s3.client.create_bucket(Bucket=cold.bucket)
        cold.mover()
        cold.wait_cold(run_id)
        _same(before, _reads(server, run_id))
    finally:
        moto.kill()


@pytest.mark.parametrize("harm", ["missing", "damaged"])
def test_a_missing_or_damaged_cold_object_is_data_loss_named_and_other_runs_read(make_server: Any, harm: str) -> None:
    cold = Cold(make_server, "local", None)
    server = cold.server
    run_id = _ended_run(cold)
    other = _ended_run(cold)
    cold.mover()
    cold.wait_cold(run_id)
    cold.wait_cold(other)
    fine = _reads(server, other)
    (key,) = [k for k in cold.objects() if run_id in k]
    path = server.artifacts / "objects" / key
    if harm == "missing":
        path.unlink()
    else:  # one bit in the first page of the first chunk's steps
        data = bytearray(path.read_bytes())
        data[len(archive.MAGIC) + 200] ^= 0x10
        path.write_bytes(bytes(data))
    says = r"missing" if harm == "missing" else rf"metric 'x' of run {run_id}.*checksum"
    with runstream.QueryClient(server.target) as q:
        with pytest.raises(runstream.DataLoss, match=says):
            list(q.read_metrics(run_id, "x"))
        with pytest.raises(runstream.DataLoss, match=says):
            q.get_metric_history(run_id, "x", max_points=200_000)
        q.get_metric_history(run_id, "x", max_points=10)  # sketches alone still answer
    assert _reads(server, other) == fine


def test_a_run_deleted_and_restored_while_cold_reads_the_same(make_server: Any) -> None:
    cold = Cold(make_server, "local", None)
    server = cold.server
    run_id = _ended_run(cold)
    before = _reads(server, run_id)
    cold.mover()
    cold.wait_cold(run_id)
    with runstream.Client(server.target) as client:
        client.delete_run(run_id)
        client.restore_run(run_id)
    _same(before, _reads(server, run_id))


def test_runs_export_writes_parquet_and_csv_that_pandas_reads(make_server: Any, tmp_path: Path) -> None:
    import pandas as pd

    cold = Cold(make_server, "local", None)
    server = cold.server
    run_id = _ended_run(cold)
    cold.mover()
    cold.wait_cold(run_id)
    with runstream.Client(server.target) as client:
        late = wire.encode(run_id, "w0", 500, ["lr"], np.zeros(1), np.array([3]), None, np.array([0.5]))
        assert raw_log(client, late).code == 0  # a second key, hot (loaded after the move)
    server.wait_points(run_id, WRITERS * POINTS + 1)
    with runstream.QueryClient(server.target) as q:
        truth = {(p.key, p.writer): p for key in ("lr", "x") for p in q.read_metrics(run_id, key)}

    def export(fmt: str) -> Any:
        out = tmp_path / f"points.{fmt}"
        done = subprocess.run(
            [sys.executable, "-m", "runstream.cli", "runs", "export", run_id[:8], "--format", fmt, "-o", str(out),
             "--url", server.target],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"wrote {WRITERS * POINTS + 1:,} points of 2 metrics" in done.stdout
        return pd.read_parquet(out) if fmt == "parquet" else pd.read_csv(out)

    frame = export("parquet")
    assert list(frame.columns) == ["run_id", "key", "writer", "step", "timestamp", "value"]
    assert (frame["run_id"] == run_id).all() and str(frame["timestamp"].dtype) == "datetime64[ms, UTC]"
    csv = export("csv")
    for got in (frame, csv):
        assert len(got) == WRITERS * POINTS + 1
        for (key, writer), part in got.groupby(["key", "writer"], observed=True):
            want = truth[(key, writer)]
            assert part["step"].tolist() == want.step.tolist()
            np.testing.assert_array_equal(part["value"].to_numpy(), want.value)

    kept = (tmp_path / "points.parquet").read_bytes()
    refused = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "runs", "export", run_id, "--key", "nosuch", "-o",
         str(tmp_path / "points.parquet"), "--url", server.target],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1 and "has no metric 'nosuch'" in refused.stderr, refused.stderr
    assert (tmp_path / "points.parquet").read_bytes() == kept  # a refused export leaves the file alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["points.csv", "points.parquet"]  # no partial files

    missing = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "runs", "export", "0" * 32, "--url", server.target],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr


def test_a_mover_never_deletes_an_object_that_went_live_after_it_listed_it(
    make_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two compactors: one lists the objects being written; before it gets to one, its mover
    settles it (live). The lister must not delete it (it asks again under the run's lock)."""
    import asyncpg

    from runstream.server.artifacts.local import LocalStore
    from runstream.server.compaction.mover import ColdMover, object_key
    from runstream.server.runtime.metrics import Metrics
    from runstream.server.storage import cold as cold_sql

    cold = Cold(make_server, "local", None)
    server = cold.server
    run_id = _ended_run(cold)
    store = LocalStore(server.artifacts, "http://127.0.0.1:9")
    key = object_key(run_id)

    async def scenario() -> None:
        pool = await asyncpg.create_pool(server.db_url, min_size=1, max_size=4)
        try:
            async with pool.acquire() as other:  # the other compactor's mover, mid-move
                assert await cold_sql.hold_run(other, run_id)
                object_id = await cold_sql.begin_object(other, run_id, key)
                (server.artifacts / "objects" / key).parent.mkdir(parents=True)
                (server.artifacts / "objects" / key).write_bytes(b"RSCOLD01 verified bytes")
                listed = cold_sql.leftovers

                async def stale(conn: Any, grace: float, limit: int) -> list[Any]:
                    found = await listed(conn, grace, limit)
                    await other.execute("UPDATE cold_objects SET state = 'live' WHERE object_id = $1", object_id)
                    await cold_sql.release_run(other, run_id)  # it settled after the list was read
                    return found

                monkeypatch.setattr(cold_sql, "leftovers", stale)
                mover = ColdMover(pool, lambda: store, Metrics(), 1.0)  # type: ignore[arg-type,return-value]
                mover._store = store
                await mover.clean()
            assert (server.artifacts / "objects" / key).exists()
            assert await pool.fetchval("SELECT state FROM cold_objects WHERE key = $1", key) == "live"
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_a_mover_whose_connections_are_killed_only_waits(make_server: Any) -> None:
    """PostgreSQL connections of a mover killed in a loop while it moves runs (a failover): it
    retries, loses and doubles nothing, and leaves one object per run."""
    cold = Cold(make_server, "local", None)
    server = cold.server
    run_ids = [_ended_run(cold) for _ in range(3)]
    before = {r: _reads(server, r) for r in run_ids}
    # each move waits 0.3 s between its verified object and its transaction: kills land in moves
    mover = cold.mover(env={"RUNSTREAM_FAILPOINT": "cold.before_settle:0.3"})
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
    for run_id in run_ids:
        cold.wait_cold(run_id)
    assert killed >= 3, killed
    assert mover.proc is not None and mover.proc.poll() is None, "".join(mover.output[-20:])
    for run_id in run_ids:
        _same(before[run_id], _reads(server, run_id))
    deadline = time.monotonic() + 60  # what interrupted moves wrote is deleted
    while len(cold.objects()) != len(run_ids) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert sorted(k.split("/")[1] for k in cold.objects()) == sorted(run_ids)
