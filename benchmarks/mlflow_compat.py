"""MLflow's own client against runstream's MLflow REST API and against an MLflow server, on the
same PostgreSQL, in the same run: log_batch from 1 and 4 processes, get_metric_history of a
100,000-point series, search_runs over 10,000 runs.

A third column times MLflow's client alone, against a proxy that answers at once: log-batch
with `{}`, anything else with runstream's answer to the same request, recorded on its first
pass. No server can be faster through this client than that, so MLflow's figure over it is the
highest ratio any server could show here (the "ceiling" column).

    python benchmarks/mlflow_compat.py [--postgres-url URL] [--redis-url URL] [--runs N]
                                       [--history-points N] [--batches N] [--work DIR]

The MLflow server (`mlflow` and `psycopg2-binary`, its own venv under --work, made once) runs
with its defaults on a fresh database of the same PostgreSQL; runstream (`--role all`, one
loader) on another. The client is this venv's mlflow-skinny (pinned in the dev extras) for
both, so only the server differs. Prints a table; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parent))

from footprint import Env, free_port, make_venv, progress, start_mlflow_server, stop
from ingest import BenchServer, _execute, service_arguments, table

MLFLOW_SERVER = ["mlflow==3.17.2", "psycopg2-binary==2.9.11"]
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # the client links every ended run
BATCH = 1000  # metrics per log_batch call: MLflow's limit


def _client(uri: str) -> object:
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _log_batches(uri: str, experiment_id: str, batches: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """One process: a run, then `batches` log_batch calls of BATCH points; puts (points, seconds)."""
    from mlflow.entities import Metric

    client = _client(uri)
    run_id = client.create_run(experiment_id).info.run_id  # type: ignore[attr-defined]
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    for b in range(batches):
        metrics = [Metric("loss", 1.0 / (s + 1), now + s, b * BATCH + s) for s in range(BATCH)]
        client.log_batch(run_id, metrics=metrics)  # type: ignore[attr-defined]
    out.put((batches * BATCH, time.perf_counter() - t0))


def log_rate(uri: str, experiment_id: str, processes: int, batches: int) -> float:
    """Points/s of `processes` processes logging at once (total points over the slowest)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_log_batches, args=(uri, experiment_id, batches, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    results = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    return sum(r[0] for r in results) / max(r[1] for r in results)


def _seed_history(uri: str, experiment_id: str, points: int) -> str:
    from mlflow.entities import Metric

    client = _client(uri)
    run_id: str = client.create_run(experiment_id).info.run_id  # type: ignore[attr-defined]
    now = int(time.time() * 1000)
    for lo in range(0, points, BATCH):
        metrics = [Metric("loss", 1.0 / (s + 1), now + s, s) for s in range(lo, min(lo + BATCH, points))]
        client.log_batch(run_id, metrics=metrics)  # type: ignore[attr-defined]
    return run_id


def _seed_runs(uri: str, experiment_id: str, first: int, count: int) -> None:
    from mlflow.entities import Metric, Param

    client = _client(uri)
    now = int(time.time() * 1000)
    for i in range(first, first + count):
        run_id = client.create_run(experiment_id, run_name=f"r{i}").info.run_id  # type: ignore[attr-defined]
        client.log_batch(  # type: ignore[attr-defined]
            run_id, metrics=[Metric("acc", (i * 7919 % 10_000) / 10_000, now, 0)], params=[Param("i", str(i))]
        )
        client.set_terminated(run_id)  # type: ignore[attr-defined]


def seed_runs(uri: str, experiment_id: str, runs: int, processes: int = 8) -> None:
    ctx = multiprocessing.get_context("spawn")
    share = -(-runs // processes)
    procs = [
        ctx.Process(target=_seed_runs, args=(uri, experiment_id, i * share, min(share, runs - i * share)))
        for i in range(processes)
        if i * share < runs
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError("seeding runs failed")


def timed(fn: Callable[[], object], repeat: int = 3) -> float:
    """Median seconds of `repeat` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(label: str, uri: str, db_url: str, args: argparse.Namespace) -> tuple[dict[str, float], dict[str, str]]:
    """The figures, and the ids of what they were measured on (the proxy reuses them). The
    database is ANALYZEd after seeding, as autovacuum would have done by then on a server
    where it is on (it is off on this machine's PostgreSQL), so both query planners know it."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    r: dict[str, float] = {}
    experiment_id = client.create_experiment(f"bench-{uuid.uuid4().hex[:6]}")
    for processes in (1, 4):
        progress(f"{label}: log_batch from {processes} process(es), {args.batches} x {BATCH} points each")
        r[f"log_{processes}"] = log_rate(uri, experiment_id, processes, args.batches)
    progress(f"{label}: a {args.history_points:,}-point series")
    run_id = _seed_history(uri, experiment_id, args.history_points)
    history = client.get_metric_history(run_id, "loss")
    if len(history) != args.history_points:
        raise RuntimeError(f"{label}: get_metric_history returned {len(history):,} of {args.history_points:,} points")
    r["history_s"] = timed(lambda: client.get_metric_history(run_id, "loss"))
    # The same request without MLflow's client, whose parsing of the answer (protobuf, then one
    # Metric object per point) takes its own second per 100,000 points: the servers alone.
    fields = {"run_id": run_id, "metric_key": "loss"}
    r["history_raw_s"] = timed(lambda: _http(uri, "GET", "metrics/get-history", fields=fields))
    progress(f"{label}: {args.runs:,} runs")
    search_experiment = client.create_experiment(f"search-{uuid.uuid4().hex[:6]}")
    t0 = time.perf_counter()
    seed_runs(uri, search_experiment, args.runs)
    r["seed_runs_per_s"] = args.runs / (time.perf_counter() - t0)
    asyncio.run(_execute(db_url, "ANALYZE"))
    query = SEARCH
    page = client.search_runs([search_experiment], max_results=100, **query)
    if len(page) != 100 or page[0].data.metrics["acc"] < page[-1].data.metrics["acc"]:
        raise RuntimeError(f"{label}: search_runs did not return 100 runs by acc")
    r["search_page_s"] = timed(lambda: client.search_runs([search_experiment], max_results=100, **query))
    body = {"experiment_ids": [search_experiment], "filter": query["filter_string"], "max_results": 100}
    body["order_by"] = query["order_by"]
    headers = {"Content-Type": "application/json"}
    r["search_raw_s"] = timed(
        lambda: _http(uri, "POST", "runs/search", body=json.dumps(body).encode(), headers=headers)
    )
    r["search_all_s"] = timed(lambda: _all_pages(client, search_experiment, query), repeat=1)
    return r, {"experiment": experiment_id, "run": run_id, "search": search_experiment}


SEARCH = {"filter_string": "metrics.acc > 0.5", "order_by": ["metrics.acc DESC"]}


def paged_history(uri: str, target: str, points: int) -> float:
    """Seconds to read a `points`-point series (logged by runstream's SDK) through raw HTTP
    get-history in MLflow's client's pages of 25,000: each page resumes where the last ended."""
    import runstream

    with runstream.Client(target) as ours:
        run = ours.start_run("paged-history", record_source=False)
        for step in range(points):
            run.log_metric("loss", 1.0 / (step + 1), step=step)
        run.end()
    fields = {"run_id": run.run_id, "metric_key": "loss", "max_results": 25_000}

    def read_all() -> None:
        got, token = 0, ""
        while True:
            page = json.loads(
                _http(uri, "GET", "metrics/get-history", fields=fields | ({"page_token": token} if token else {}))
            )
            got += len(page["metrics"])
            token = page.get("next_page_token", "")
            if not token:
                break
        if got != points:
            raise RuntimeError(f"paged get-history returned {got:,} of {points:,} points")

    progress(f"runstream: get-history of {points:,} points in pages of 25,000")
    return timed(read_all, repeat=1)


def measure_client_alone(upstream: str, ids: dict[str, str], args: argparse.Namespace) -> dict[str, float]:
    """MLflow's client against the replaying proxy in front of runstream (see the docstring)."""
    from mlflow import MlflowClient

    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    proxy = ctx.Process(target=_replay_proxy, args=(upstream, port), daemon=True)
    proxy.start()
    uri = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib3.request("GET", f"{uri}/health", timeout=1)
            break
        except urllib3.exceptions.HTTPError:
            time.sleep(0.05)
    try:
        client = MlflowClient(uri)
        r: dict[str, float] = {}
        for processes in (1, 4):
            progress(f"MLflow's client alone: log_batch from {processes} process(es)")
            r[f"log_{processes}"] = log_rate(uri, ids["experiment"], processes, args.batches)
        progress("MLflow's client alone: get_metric_history and search_runs, answers replayed")
        r["history_s"] = timed(lambda: client.get_metric_history(ids["run"], "loss"))
        search = [ids["search"]]
        r["search_page_s"] = timed(lambda: client.search_runs(search, max_results=100, **SEARCH))
        r["search_all_s"] = timed(lambda: _all_pages(client, ids["search"], SEARCH), repeat=1)
        return r
    finally:
        proxy.terminate()
        proxy.join()


def _replay_proxy(upstream: str, port: int) -> None:
    """Answers log-batch with {} at once; anything else with upstream's answer to the same
    request (method, path and query, body), fetched the first time and replayed after."""
    from aiohttp import ClientSession, web

    answers: dict[tuple[str, str, bytes], tuple[int, bytes]] = {}

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        if request.path.endswith("/runs/log-batch"):
            return web.Response(body=b"{}", content_type="application/json")
        key = (request.method, request.path_qs, body)
        if key not in answers:
            async with (
                ClientSession() as session,
                session.request(
                    request.method, upstream + request.path_qs, data=body, headers={"Content-Type": "application/json"}
                ) as reply,
            ):
                answers[key] = (reply.status, await reply.read())
        status, data = answers[key]
        return web.Response(status=status, body=data, content_type="application/json")

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _http(uri: str, method: str, path: str, **kwargs: Any) -> bytes:
    reply = urllib3.request(method, f"{uri}/api/2.0/mlflow/{path}", timeout=600, **kwargs)
    if reply.status != 200:
        raise RuntimeError(f"{method} {path}: {reply.status} {reply.data[:200]!r}")
    return bytes(reply.data)


def _all_pages(client: object, experiment_id: str, query: dict[str, object]) -> int:
    found, token = 0, None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token, **query)  # type: ignore[attr-defined]
        found += len(page)
        token = page.token
        if not token:
            return found


def mlflow_server(args: argparse.Namespace, db_url: str) -> tuple[object, str]:
    env = Env("mlflow-server", MLFLOW_SERVER, "mlflow")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env.path = work / env.label
    if not (env.path / "bin" / "mlflow").exists() and not make_venv(env, work):
        raise SystemExit(f"cannot install the MLflow server: {'; '.join(env.notes)}")
    backend = db_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    proc, port = start_mlflow_server(env, backend, "--default-artifact-root", str(work / "mlflow-artifacts"))
    return proc, f"http://127.0.0.1:{port}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    service_arguments(p)
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--history-points", type=int, default=100_000)
    p.add_argument("--batches", type=int, default=20, help="log_batch calls per process")
    p.add_argument("--paged-points", type=int, default=1_000_000, help="series read in pages (runstream only)")
    p.add_argument("--work", default=str(Path.home() / ".cache" / "runstream-bench"))
    p.add_argument("--skip-mlflow", action="store_true", help="runstream only")
    args = p.parse_args()

    results: dict[str, dict[str, float]] = {}
    server = BenchServer(args.postgres_url, args.redis_url, loaders=1)
    try:
        upstream = f"http://127.0.0.1:{server.http_ports[0]}"
        results["runstream"], ids = measure("runstream", upstream, server.db_url, args)
        alone = measure_client_alone(upstream, ids, args)
        results["runstream"]["paged_raw_s"] = paged_history(upstream, server.target, args.paged_points)
    finally:
        server.close()
    if not args.skip_mlflow:
        db = f"mlflow_bench_{uuid.uuid4().hex[:8]}"
        asyncio.run(_execute(args.postgres_url, f"CREATE DATABASE {db}"))
        db_url = args.postgres_url.rsplit("/", 1)[0] + "/" + db
        proc, uri = mlflow_server(args, db_url)
        try:
            results["mlflow"], _ = measure("mlflow server", uri, db_url, args)
        finally:
            stop(proc)  # type: ignore[arg-type]
            asyncio.run(_execute(args.postgres_url, f"DROP DATABASE {db} WITH (FORCE)"))

    rows = [
        ("log_batch, 1 process (points/s)", "log_1", "{:,.0f}", True),
        ("log_batch, 4 processes (points/s)", "log_4", "{:,.0f}", True),
        (f"get_metric_history, {args.history_points:,} points (s)", "history_s", "{:.3f}", False),
        ("  the same, raw HTTP: the server alone (s)", "history_raw_s", "{:.3f}", False),
        (f"search_runs, first 100 of {args.runs:,} by metric (s)", "search_page_s", "{:.3f}", False),
        ("  the same, raw HTTP: the server alone (s)", "search_raw_s", "{:.3f}", False),
        (f"search_runs, all {args.runs:,} in pages of 1,000 (s)", "search_all_s", "{:.2f}", False),
        ("create_run + log_batch + end, 8 processes (runs/s)", "seed_runs_per_s", "{:,.0f}", True),
        (f"get-history, {args.paged_points:,} points, pages of 25,000, raw (s)", "paged_raw_s", "{:.2f}", False),
    ]
    vs_mlflow = "mlflow" in results
    header = ["MLflow client, same PostgreSQL", *results]
    header += ["runstream vs MLflow"] if vs_mlflow else []
    header += ["client alone (instant answers)", *(["ceiling vs MLflow"] if vs_mlflow else [])]
    lines = []
    for label, key, fmt, higher_better in rows:
        cells = [label, *(fmt.format(r[key]) if key in r else "-" for r in results.values())]
        if vs_mlflow:
            both = key in results["mlflow"]
            cells.append(_ratio(results["runstream"][key], results["mlflow"][key], higher_better) if both else "-")
        cells.append(fmt.format(alone[key]) if key in alone else "-")
        if vs_mlflow:
            cells.append(_ratio(alone[key], results["mlflow"][key], higher_better) if key in alone else "-")
        lines.append(cells)
    print(table(header, lines))


def _ratio(ours: float, theirs: float, higher_better: bool) -> str:
    return f"{(ours / theirs if higher_better else theirs / ours):.1f}x"


if __name__ == "__main__":
    main()
