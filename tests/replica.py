"""A PostgreSQL primary with a streaming replica on loopback for the tests: the machine's
PostgreSQL binaries (Debian's), a private primary made by initdb, and its replica made by
`pg_basebackup -R` from it. The replica can fall behind (replay paused) and go down.
PostgreSQL refuses to run as root, so as root the clusters run as the `postgres` user."""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import asyncpg

from tests.conftest import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise FileNotFoundError(f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql)")
    return found[-1]


class Replication:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.primary_port, self.replica_port = free_port(), free_port()
        self.primary_dir, self.replica_dir = root / "primary", root / "replica"
        self.database = f"rs_replica_{os.getpid()}"
        self.extra: dict[int, Path] = {}  # more replicas: port -> data directory

    def url(self, port: int, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/{database}"

    @property
    def primary_url(self) -> str:
        return self.url(self.primary_port, self.database)

    @property
    def replica_url(self) -> str:
        return self.url(self.replica_port, self.database)

    def start(self) -> Replication:
        self.root.mkdir(parents=True, exist_ok=True)
        self._own(self.root)
        self._as_postgres(_bin("initdb"), "-D", str(self.primary_dir), "-A", "trust", "-U", "postgres")
        settings = [
            f"port = {self.primary_port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.root}'",
            "wal_level = replica",
            "max_wal_senders = 4",
            "fsync = off",
        ]
        with open(self.primary_dir / "postgresql.conf", "a") as conf:
            conf.write("\n".join(settings) + "\n")
        with open(self.primary_dir / "pg_hba.conf", "a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        self._pg_ctl(self.primary_dir, "start")
        self.sql(self.url(self.primary_port), f"CREATE DATABASE {self.database}")
        source = ["-h", "127.0.0.1", "-p", str(self.primary_port), "-U", "postgres"]
        self._as_postgres(
            _bin("pg_basebackup"), *source, "-D", str(self.replica_dir), "-R", "-X", "stream", "-c", "fast"
        )
        with open(self.replica_dir / "postgresql.conf", "a") as conf:
            conf.write(f"port = {self.replica_port}\n")
        self.start_replica()
        return self

    def add_replica(self) -> int:
        """Another replica of the primary (pg_basebackup -R); its port."""
        port = free_port()
        folder = self.root / f"replica-{port}"
        source = ["-h", "127.0.0.1", "-p", str(self.primary_port), "-U", "postgres"]
        self._as_postgres(_bin("pg_basebackup"), *source, "-D", str(folder), "-R", "-X", "stream", "-c", "fast")
        with open(folder / "postgresql.conf", "a") as conf:
            conf.write(f"port = {port}\n")
        self._pg_ctl(folder, "start")
        self.extra[port] = folder
        return port

    def start_replica(self) -> None:
        self._pg_ctl(self.replica_dir, "start")
        self.wait_replayed()

    def stop_replica(self) -> None:
        self._pg_ctl(self.replica_dir, "stop", "-m", "immediate")

    def pause(self, port: int | None = None) -> None:
        """The replica receives WAL but stops replaying it: it falls behind."""
        self.sql(self.url(port or self.replica_port), "SELECT pg_wal_replay_pause()")

    def resume(self, port: int | None = None) -> None:
        self.sql(self.url(port or self.replica_port), "SELECT pg_wal_replay_resume()")

    def remove_replica(self, port: int) -> None:
        self._pg_ctl(self.extra.pop(port), "stop", "-m", "immediate")

    def wait_replayed(self, timeout: float = 30.0) -> None:
        """Until the replica has replayed everything the primary has written."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                target = self.sql(self.url(self.primary_port), "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
                done = self.sql(self.url(self.replica_port), "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn")
                if done is not None and done >= target:
                    return
            except (OSError, asyncpg.PostgresError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"the replica did not catch up within {timeout:.0f} s")

    def stop(self) -> None:
        for folder in (*self.extra.values(), self.replica_dir, self.primary_dir):
            if (folder / "postmaster.pid").exists():
                self._pg_ctl(folder, "stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def sql(url: str, query: str) -> object:
        import asyncio

        async def run() -> object:
            conn = await asyncpg.connect(url)
            try:
                return await conn.fetchval(query)
            finally:
                await conn.close()

        return asyncio.run(run())

    def _pg_ctl(self, folder: Path, action: str, *more: str) -> None:
        log = self.root / f"{folder.name}.log"
        self._as_postgres(_bin("pg_ctl"), "-D", str(folder), "-l", str(log), "-w", action, *more)

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")

    @staticmethod
    def _as_postgres(*command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)


class RoundRobinProxy:
    """One address in front of several PostgreSQL servers, each new connection to the next, as a
    load balancer in front of replicas (CloudNativePG's -ro Service) does."""

    def __init__(self, ports: list[int]) -> None:
        self.ports, self.port = ports, free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._turn = itertools.cycle(ports)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            backend = socket.create_connection(("127.0.0.1", next(self._turn)))
            for a, b in ((client, backend), (backend, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
