"""Fixtures: real runstream servers (subprocesses) on real PostgreSQL and Redis.

The machine's PostgreSQL and Redis are used when they answer (RUNSTREAM_TEST_POSTGRES_URL,
RUNSTREAM_TEST_REDIS_URL override the defaults); otherwise the embedded ones are started
once for the session. Every server gets its own database and Redis key prefix.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
import redis

from runstream.server.storage import codec
from runstream.server.streams.keys import Keys
from runstream.wire.proto import tracking_pb2

PG_ADMIN_URL = os.environ.get("RUNSTREAM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("RUNSTREAM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Tests count the points and files they log: writers sample no system metrics unless a test
# asks (tests/integration/test_system_metrics.py)...
os.environ.setdefault("RUNSTREAM_SYSTEM_METRICS", "0")
os.environ.setdefault("RUNSTREAM_CONSOLE", "0")  # nor console logs (tests/integration/test_console.py)
# Writers spool into this session's own directory, and a test's leftovers are not sent by the
# next test's client (tests/integration/test_spool.py sends them on purpose).
os.environ.setdefault("RUNSTREAM_SPOOL_DIR", tempfile.mkdtemp(prefix="rs-spool-"))
os.environ.setdefault("RUNSTREAM_SYNC_ON_START", "0")


# `make test` runs the fault suite's short form; RUNSTREAM_TEST_SOAK=1 runs its long one (the
# scenarios as an issue states them: minutes of outage, hundreds of thousands of points).
SOAK = os.environ.get("RUNSTREAM_TEST_SOAK", "").lower() in ("1", "true", "yes")


def soak(short: Any, long: Any) -> Any:
    """`long` under RUNSTREAM_TEST_SOAK=1, else `short`."""
    return long if SOAK else short


def sql(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


def _pg_answers(url: str) -> bool:
    try:
        sql(url, "SELECT 1")
        return True
    except (OSError, asyncpg.PostgresError):
        return False


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


@dataclass
class Services:
    pg_admin_url: str
    redis_url: str

    def new_database(self) -> str:
        name = f"rs_test_{uuid.uuid4().hex[:10]}"
        sql(self.pg_admin_url, f"CREATE DATABASE {name}")
        return _with_database(self.pg_admin_url, name)


def _with_database(url: str, name: str) -> str:
    scheme, rest = url.split("://", 1)
    if "?" in rest:
        base, query = rest.split("?", 1)
        query = "?" + query
    else:
        base, query = rest, ""
    host = base.rsplit("/", 1)[0] if "/" in base else base
    return f"{scheme}://{host}/{name}{query}"


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    if _pg_answers(PG_ADMIN_URL) and _redis_answers(REDIS_URL):
        yield Services(PG_ADMIN_URL, REDIS_URL)
        return
    from runstream.server.runtime.embedded import EmbeddedPostgres, EmbeddedRedis

    data = tmp_path_factory.mktemp("embedded")
    pg, rd = EmbeddedPostgres(data), EmbeddedRedis(data)
    try:
        yield Services(pg.url, rd.url)
    finally:
        rd.stop()
        pg.stop()


def cli_sync(server: Server, root: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`runstream sync ROOT` against `server`, as a person runs it (a process of its own)."""
    done = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "sync", str(root), "--url", server.target, *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert not check or done.returncode == 0, done.stderr
    return done


def raw_log(client: Any, data: bytes) -> Any:
    """LogMetrics with a batch serialized by hand (so tests can send what the SDK never would)."""
    call = client.channel.unary_unary(
        "/runstream.v1.TrackingService/LogMetrics",
        request_serializer=None,
        response_deserializer=tracking_pb2.BatchAck.FromString,
    )
    return call(data, timeout=30)


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range: a port the kernel handed out for
    `bind(0)` can be taken, before the server binds it, by any outgoing connection (a client of
    PostgreSQL or Redis), which draws from the same range."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]) if _LINUX else 32768
    while True:
        port = _PORTS.randrange(10_000, max(10_001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


_LINUX = Path("/proc/sys/net/ipv4/ip_local_port_range").exists()
_PORTS = random.Random()  # its own: tests that seed `random` must not make two workers pick alike


@dataclass
class Server:
    """A `runstream server` subprocess; `target` for clients, `db_url` to check storage."""

    db_url: str
    redis_url: str
    prefix: str
    port: int
    args: list[str]
    env: dict[str, str]
    artifacts: Path  # the local artifact store's directory
    proc: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_port(self) -> int:
        """Where /metrics (and the local store's signed URLs) are served."""
        return int(self.args[self.args.index("--http-port") + 1])

    def start(self, timeout: float = 60.0) -> Server:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runstream.cli", "server", "--port", str(self.port), *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if "runstream listening on" in line:  # every role serves gRPC (a loader: health)
                _pump(self.proc, self.output)
                return self
        self.stop()
        raise RuntimeError("server did not start:\n" + "".join(self.output))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return sql(self.db_url, query, *args)

    def fingerprint(self) -> dict[str, Any]:
        """Every table's rows, every Redis key of the server, and every stored artifact file: two
        fingerprints are equal when nothing was changed in between."""

        async def tables() -> dict[str, str]:
            conn = await asyncpg.connect(self.db_url)
            try:
                names = [
                    r["tablename"]
                    for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                ]
                query = " UNION ALL ".join(
                    f"SELECT '{t}' AS t, md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) AS h FROM {t} x"
                    for t in names
                )
                return {r["t"]: r["h"] for r in await conn.fetch(query)}
            finally:
                await conn.close()

        r = redis.Redis.from_url(self.redis_url)
        keys = {}
        for key in sorted(k for pattern in Keys(self.prefix).patterns() for k in r.scan_iter(pattern)):
            kind = r.type(key).decode()
            keys[key] = (kind, r.xlen(key) if kind == "stream" else r.dump(key))
        files = sorted((str(p), p.stat().st_size) for p in self.artifacts.rglob("*") if p.is_file())
        return {"tables": asyncio.run(tables()), "redis": keys, "files": files}

    def dead_letters(self) -> int:
        """Dead letters in every shard of this server's Redis keyspace."""
        r = redis.Redis.from_url(self.redis_url)
        return sum(r.xlen(letters) for letters in Keys(self.prefix).all_dead_letters())

    def wait_output(self, text: str, timeout: float = 60.0) -> None:
        """Wait until the server has printed a line holding `text` (a failpoint reached, a warning)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.output):
                return
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never appeared:\n" + "".join(self.output))

    def wait_compacted(self, run_id: str, timeout: float = 120.0) -> int:
        """Wait until every chunk of `run_id` is a compacted one; returns how many there are."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.sql(
                "SELECT count(*) FILTER (WHERE c.codec = 0) AS ingest, count(*) AS every FROM metric_chunks c "
                "JOIN metric_series s USING (series_id) WHERE s.run_id = $1",
                run_id,
            )[0]
            if row["every"] and not row["ingest"]:
                return int(row["every"])
            time.sleep(0.2)
        raise AssertionError(f"run {run_id} still has ingest chunks after {timeout:.0f} s")

    def wait_points(self, run_id: str, expected: int, timeout: float = 120.0) -> int:
        """Wait until the summaries of `run_id` count `expected` points; returns the count."""
        deadline = time.monotonic() + timeout
        count = 0
        while time.monotonic() < deadline:
            count = self.sql(
                "SELECT coalesce(sum(count), 0)::int8 AS n FROM metric_summaries WHERE run_id = $1", run_id
            )[0]["n"]
            if count >= expected:
                time.sleep(0.3)  # anything beyond `expected` would be a doubled point: let it show
                return int(
                    self.sql(
                        "SELECT coalesce(sum(count), 0)::int8 AS n FROM metric_summaries WHERE run_id = $1", run_id
                    )[0]["n"]
                )
            time.sleep(0.1)
        return int(count)

    def stored(self, run_id: str) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
        """Every stored point of a run, decoded from its chunks: (key, writer) -> (steps, values),
        in step order (chunks of one series may overlap: a loader that retried after losing its
        connection can commit an older batch with a newer one)."""
        rows = self.sql(
            "SELECT s.key, s.writer_id, c.codec, c.steps, c.timestamps, c.vals FROM metric_chunks c "
            "JOIN metric_series s USING (series_id) WHERE s.run_id = $1 ORDER BY s.series_id, c.first_step",
            run_id,
        )
        parts: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
        for r in rows:
            steps, _, vals = codec.decode(r["codec"], r["steps"], r["timestamps"], r["vals"])
            parts.setdefault((r["key"], r["writer_id"]), []).append((steps, vals))
        out = {}
        for k, v in parts.items():
            steps, vals = np.concatenate([p[0] for p in v]), np.concatenate([p[1] for p in v])
            order = np.argsort(steps, kind="stable")
            out[k] = (steps[order], vals[order])
        return out


def _pump(proc: subprocess.Popen[str], sink: list[str]) -> None:
    """Keep reading the server's output so it never blocks on a full pipe."""
    import threading

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.append(line)

    threading.Thread(target=read, daemon=True).start()


def _server_factory(services: Services) -> Iterator[Any]:
    """A factory of servers; servers made with the same `like=` share database and prefix."""
    made: list[Server] = []

    created: set[str] = set()

    def make(
        *extra: str,
        like: Server | None = None,
        env: dict[str, str] | None = None,
        start: bool = True,
        database: str | None = None,
    ) -> Server:
        """A server on a new database (or `like`'s, or the `database` URL given, left alone)."""
        db_url = like.db_url if like else database or services.new_database()
        if not like and not database:
            created.add(db_url)
        prefix = like.prefix if like else f"rs-test-{uuid.uuid4().hex[:8]}"
        artifacts = like.artifacts if like else Path(tempfile.mkdtemp(prefix="rs-artifacts-"))
        args = [
            "--artifacts",
            artifacts.as_uri(),
            "--http-port",
            str(free_port()),
            "--postgres-url",
            db_url,
            "--redis-url",
            services.redis_url,
            "--redis-prefix",
            prefix,
            "--claim-idle-ms",
            "1000",
            *extra,
        ]
        server = Server(db_url, services.redis_url, prefix, free_port(), args, {**os.environ, **(env or {})}, artifacts)
        made.append(server)
        return server.start() if start else server

    yield make
    for server in made:
        server.stop()
    # Leave nothing behind: each server's database and Redis keys.
    r = redis.Redis.from_url(services.redis_url)
    for prefix in {s.prefix for s in made}:
        for key in [k for pattern in Keys(prefix).patterns() for k in r.scan_iter(pattern)]:
            r.delete(key)
    for folder in {s.artifacts for s in made}:
        shutil.rmtree(folder, ignore_errors=True)
    for db_url in created:
        sql(services.pg_admin_url, f"DROP DATABASE IF EXISTS {db_url.rsplit('/', 1)[1].split('?')[0]} WITH (FORCE)")


@pytest.fixture
def make_server(services: Services) -> Iterator[Any]:
    yield from _server_factory(services)


@pytest.fixture(scope="module")
def make_module_server(services: Services) -> Iterator[Any]:
    """Servers shared by a module's tests (e.g. one data set read many ways)."""
    yield from _server_factory(services)


@pytest.fixture
def server(make_server: Any) -> Server:
    return make_server()  # type: ignore[no-any-return]


ROOT = Path(__file__).resolve().parent.parent


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "runstream-test", "AWS_SECRET_ACCESS_KEY": "runstream-test-secret"}


@dataclass
class S3:
    """moto's standalone S3 server on loopback, and a boto3 client of it for checking buckets."""

    endpoint: str
    client: Any

    def new_bucket(self) -> str:
        name = f"rs-test-{uuid.uuid4().hex[:10]}"
        self.client.create_bucket(Bucket=name)
        return name


def start_moto(port: int) -> tuple[subprocess.Popen[bytes], S3]:
    """moto's standalone S3 server on loopback at `port` (a test that stops it starts its own)."""
    import boto3
    import urllib3

    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib3.request("GET", f"{endpoint}/moto-api/", timeout=1)
            break
        except urllib3.exceptions.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto's S3 server did not start") from None
            time.sleep(0.2)
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    return proc, S3(endpoint, client)


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3]:
    proc, s3 = start_moto(free_port())
    try:
        yield s3
    finally:
        proc.terminate()
        proc.wait(10)


def require_tool(name: str) -> str:
    """The path of a Debian tool a test needs (prometheus, promtool). Outside CI a machine
    without it skips the test and says why; under CI=true (.ci/run installs it) that fails."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is missing: apt-get install prometheus (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path
