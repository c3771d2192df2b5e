"""Purging deleted runs (AdminService.PurgeRuns, `runstream admin gc`), as `mlflow gc`: a deleted
run goes for good with its rows, metrics (its cold object too) and artifacts; what must stay
stays, and a dry run or a refused call changes nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import numpy as np
import pytest
import urllib3

import runstream
from runstream.wire import batch as wire
from runstream.wire.proto import admin_pb2 as adm
from runstream.wire.proto import admin_pb2_grpc
from tests.conftest import PG_ADMIN_URL, Server, raw_log

RUN_TABLES = ("params", "tags", "metric_series", "metric_summaries", "artifacts", "ingested_batches", "writer_epochs")


def _run(server: Server, tmp_path: Path, name: str, end: bool = True) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "notes.txt").write_text(f"notes of {name}")
    with runstream.Client(server.target) as client:
        run = client.start_run("purge", name=name, params={"lr": 0.1})
        steps = np.arange(5_000)
        assert (
            raw_log(client, wire.encode(run.run_id, "w", 1, ["x"], np.zeros(5_000), steps, None, steps * 1.0)).code == 0
        )
        run.log_artifacts(folder, "files")
        server.wait_points(run.run_id, 5_000)
        if end:
            run.end()
        return run.run_id


def _gc(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runstream.cli", "admin", "gc", "--url", server.target, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _rows_of(server: Server, run_id: str) -> dict[str, int]:
    counts = {t: server.sql(f"SELECT count(*) AS n FROM {t} WHERE run_id = $1", run_id)[0]["n"] for t in RUN_TABLES}
    counts["runs"] = server.sql("SELECT count(*) AS n FROM runs WHERE run_id = $1", run_id)[0]["n"]
    counts["chunks"] = server.sql(
        "SELECT count(*) AS n FROM metric_chunks c JOIN metric_series s USING (series_id) WHERE s.run_id = $1", run_id
    )[0]["n"]
    return counts


def _files(server: Server) -> list[str]:
    root = server.artifacts / "objects"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_a_deleted_cold_run_is_purged_with_its_rows_artifacts_and_object(make_server: Any, tmp_path: Path) -> None:
    server = make_server("--compact-delay", "0", "--cold-after", "1")
    gone = _run(server, tmp_path, "gone")
    kept = _run(server, tmp_path, "kept", end=False)
    deadline = time.monotonic() + 60
    while not any(f.startswith(f"runs/{gone}/metrics/") for f in _files(server)):
        assert time.monotonic() < deadline, "the ended run never went cold"
        time.sleep(0.2)
    with runstream.QueryClient(server.target) as q:
        kept_points = [p.step.tolist() for p in q.read_metrics(kept, "x")]
    with runstream.Client(server.target) as client:
        client.delete_run(gone)

    dry = _gc(server, "--dry-run")
    assert dry.returncode == 0 and f"would purge run {gone}" in dry.stdout and kept not in dry.stdout, dry
    assert _rows_of(server, gone)["runs"] == 1 and any(gone in f for f in _files(server))
    assert _gc(server, "--older-than", "1d").stdout.strip() == "purged 0 runs; 0 artifacts deleted"

    elsewhere = threading.Event()  # a long transaction in another database must not hold deletions back
    holder = threading.Thread(target=_transaction_elsewhere, args=(elsewhere,))
    holder.start()
    done = _gc(server)
    assert done.returncode == 0 and f"purged run {gone}" in done.stdout, done
    assert "purged 1 run; 1 artifact deleted" in done.stdout
    assert set(_rows_of(server, gone).values()) == {0}
    deadline = time.monotonic() + 60  # the cold object: deleted by the compactor once no read can use it
    while any(gone in f for f in _files(server)):
        assert time.monotonic() < deadline, _files(server)
        time.sleep(0.3)
    elsewhere.set()
    holder.join()
    assert server.sql("SELECT count(*) AS n FROM cold_objects WHERE run_id = $1", gone)[0]["n"] == 0
    with runstream.QueryClient(server.target) as q:
        assert [p.step.tolist() for p in q.read_metrics(kept, "x")] == kept_points
        with pytest.raises(runstream.NotFound):
            list(q.read_metrics(gone, "x"))
    assert all(f.startswith(f"runs/{kept}/") for f in _files(server))
    # A purged id is never a run again: a job resumed under it would start its writer epochs
    # anew and see its batches taken for the purged run's resends.
    with runstream.Client(server.target) as client:
        with pytest.raises(runstream.FailedPrecondition, match="purged for good"):
            client.start_run("purge", record_source=False, resume=gone)
        with pytest.raises(runstream.FailedPrecondition, match="purged for good"):
            client.create_run("purge", run_id=gone)


def _transaction_elsewhere(done: threading.Event) -> None:
    async def hold() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            async with conn.transaction():
                await conn.fetchval("SELECT txid_current()")
                await asyncio.to_thread(done.wait)
        finally:
            await conn.close()

    asyncio.run(hold())


def test_named_runs_are_all_answered_and_model_sources_never_block_the_rest(make_server: Any, tmp_path: Path) -> None:
    server = make_server()
    model = _run(server, tmp_path, "model")
    later = [_run(server, tmp_path, f"later{i}") for i in range(3)]
    with runstream.Client(server.target) as client:
        client.registry.register_model(model, "files", "blocking-model")
        client.delete_run(model)  # deleted first: the oldest deletion
        for run_id in later[:2]:
            client.delete_run(run_id)
        done = client.admin.purge_runs(max_runs=1)  # the model's run stays out of the way
        assert list(done.purged) == [later[0]] and not done.skipped and done.more
        client.delete_run(later[2])
        named = client.admin.purge_runs(run_ids=[later[1], later[2], model], max_runs=1)  # more named than max_runs
        assert sorted(named.purged) == sorted(later[1:]) and [s.run_id for s in named.skipped] == [model]
    reply = urllib3.request(
        "POST", f"http://127.0.0.1:{server.http_port}/api/v1/runstream.v1.AdminService/PurgeRuns", body=b"[]",
        headers={"Content-Type": "application/json"}, timeout=30,
    )  # fmt: skip
    assert reply.status == 400 and "JSON object" in reply.data.decode(), reply.data


def test_a_purge_racing_a_registration_keeps_the_run_or_refuses_the_registration(
    make_server: Any, tmp_path: Path
) -> None:
    server = make_server()
    runs = [_run(server, tmp_path, f"race{i}") for i in range(8)]
    outcomes: dict[str, list[str]] = {r: [] for r in runs}

    def register(run_id: str) -> None:
        with runstream.Client(server.target) as client:
            try:
                client.registry.register_model(run_id, "files", f"race-{run_id[:8]}")
                outcomes[run_id].append("registered")
            except (runstream.NotFound, runstream.FailedPrecondition) as exc:
                outcomes[run_id].append(type(exc).__name__)

    def purge(run_id: str) -> None:
        with runstream.Client(server.target) as client:
            client.delete_run(run_id)
            for _ in range(50):
                done = client.admin.purge_runs(run_ids=[run_id])  # never INTERNAL
                if done.purged:
                    outcomes[run_id].append("purged")
                    return
                if "model version" in done.skipped[0].reason:
                    outcomes[run_id].append("kept")
                    return

    threads = [threading.Thread(target=f, args=(r,)) for r in runs for f in (register, purge)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seen in outcomes.values():
        assert sorted(seen) in (["kept", "registered"], ["NotFound", "purged"], ["FailedPrecondition", "purged"]), seen
    assert not any("internal error" in line for line in server.output), "".join(server.output)


def test_what_must_stay_stays_and_says_why(make_server: Any, tmp_path: Path) -> None:
    server = make_server()
    active = _run(server, tmp_path, "active")
    model = _run(server, tmp_path, "model")
    with runstream.Client(server.target) as client:
        client.registry.register_model(model, "files", "purge-model")
        client.delete_run(model)
    missing = "0" * 32
    before = server.fingerprint()
    done = _gc(server, "--run", active, "--run", model, "--run", missing)
    assert done.returncode == 0, done
    assert f"kept run {active}: the run is not deleted" in done.stderr
    assert f"kept run {model}: registered model versions come from it (purge-model version 1)" in done.stderr
    assert "no such run" in done.stderr and "purged 0 runs" in done.stdout
    assert server.fingerprint() == before

    with grpc.insecure_channel(server.target) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        for bad, says in (
            (adm.PurgeRunsRequest(older_than_ms=-1), "older_than_ms"),
            (adm.PurgeRunsRequest(max_runs=5_000), "max_runs"),
            (adm.PurgeRunsRequest(run_ids=["not-a-run"]), "run"),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                stub.PurgeRuns(bad, timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in refused.value.details()
        # older_than at the top of int64 purges nothing, and does not overflow
        assert not stub.PurgeRuns(adm.PurgeRunsRequest(older_than_ms=2**63 - 1), timeout=30).purged
    for flag in ("-5d", "abc", "0d", "99999999999d"):
        refused_cli = _gc(server, f"--older-than={flag}")
        assert refused_cli.returncode != 0 and len(refused_cli.stderr.strip().splitlines()) == 1, refused_cli
    assert server.fingerprint() == before
