"""Where reads go: PostgreSQL streaming replicas (--postgres-read-url), for reads that may lag,
and the primary for whatever a replica has not replayed yet.

A read must see what its caller wrote before it: the primary's WAL position (an LSN) after
that write is what the read waits for. This process notes the position after every write call
it serves (`noted`, by the doors in rpc/), and gRPC callers carry the position their own
writes got back (metadata `runstream-read-after`, set as READ_AFTER for the call), so a client
reads its writes whichever process served them. A read takes a replica that has replayed past
the larger of the two; a replica behind it is waited for up to `wait_s`, then the read goes to
the primary. A replica that cannot be reached is left alone for `DOWN_S`. With no replicas
every read goes to the primary and nothing is noted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass

import asyncpg

log = logging.getLogger(__name__)

Pooled = asyncpg.pool.PoolConnectionProxy  # a connection of one of the pools
READ_AFTER: ContextVar[int] = ContextVar("read_after", default=0)  # the caller's writes reached this LSN
POLL_S = 0.005  # between looks at a replica that is behind
DOWN_S = 5.0  # a replica that failed is not tried again for this long
CONNECT_S = 2.0  # a replica that does not hand out a connection within this is taken for down

_PRIMARY_LSN = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"
_REPLAYED_LSN = "SELECT coalesce(pg_last_wal_replay_lsn(), '0/0'::pg_lsn) - '0/0'::pg_lsn"


@dataclass
class _Replica:
    pool: asyncpg.Pool
    name: str  # printable, without its password
    replayed: int = 0  # the last LSN it was seen to have replayed
    down_until: float = 0.0


class Reads:
    def __init__(
        self,
        primary: asyncpg.Pool,
        replicas: dict[str, asyncpg.Pool] | None = None,
        wait_s: float = 1.0,
        count: Callable[[str], None] = lambda where: None,
    ) -> None:
        self.primary = primary
        self.replicas = [_Replica(pool, name) for name, pool in (replicas or {}).items()]
        self.wait_s = wait_s
        self.seen = 0  # the primary's LSN after the last write this process served
        self.count = count  # "replica", "primary" (a read that could not use one) or "wait"
        self._turn = itertools.cycle(range(len(self.replicas) or 1))

    @property
    def tracking(self) -> bool:
        """Whether writes must be noted: reads may go to replicas."""
        return bool(self.replicas)

    async def noted(self) -> int:
        """After a write: the primary's LSN now, noted for this process's later reads."""
        if not self.replicas:
            return 0
        lsn = int(await self.primary.fetchval(_PRIMARY_LSN))
        self.seen = max(self.seen, lsn)
        return lsn

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Pooled]:
        """A connection for a read that must see every write noted so far."""
        needed = max(self.seen, READ_AFTER.get())
        deadline = time.monotonic() + self.wait_s
        for replica in self._in_turn():
            conn = await self._caught_up(replica, needed, deadline)
            if conn is not None:
                self.count("replica")
                try:
                    yield conn
                finally:
                    await replica.pool.release(conn)
                return
        if self.replicas:
            self.count("primary")
        async with self.primary.acquire() as conn:
            yield conn

    def _in_turn(self) -> list[_Replica]:
        """The replicas that are up, starting with the next one in turn."""
        if not self.replicas:
            return []
        first = next(self._turn)
        now = time.monotonic()
        ordered = self.replicas[first:] + self.replicas[:first]
        return [r for r in ordered if r.down_until <= now]

    async def _caught_up(self, replica: _Replica, needed: int, deadline: float) -> Pooled | None:
        """A connection of `replica` once it has replayed `needed`; None if it has not by
        `deadline` (or cannot be reached: then it is left alone for a while)."""
        try:
            conn = await asyncio.wait_for(replica.pool.acquire(), CONNECT_S)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self._down(replica, exc)
            return None
        try:
            waited = False
            while replica.replayed < needed:
                replica.replayed = max(replica.replayed, int(await conn.fetchval(_REPLAYED_LSN)))
                if replica.replayed >= needed:
                    break
                if time.monotonic() >= deadline:
                    await replica.pool.release(conn)
                    return None
                waited = True
                await asyncio.sleep(POLL_S)
            if waited:
                self.count("wait")
            return conn
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            with contextlib.suppress(Exception):  # it is going anyway
                await replica.pool.release(conn)
            self._down(replica, exc)
            return None

    async def close(self) -> None:
        for replica in self.replicas:
            await replica.pool.close()

    def _down(self, replica: _Replica, exc: BaseException) -> None:
        if replica.down_until <= time.monotonic():
            log.warning(
                "replica %s cannot be read (%s: %s); reads go elsewhere for %.0f s",
                replica.name,
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
                DOWN_S,
            )
        replica.down_until = time.monotonic() + DOWN_S


def read_after(value: str) -> int:
    """The metadata `runstream-read-after` as an LSN; ValueError unless it is one."""
    if not (value.isascii() and value.isdigit()) or len(value) > 20 or int(value) >= 2**64:
        raise ValueError(f"runstream-read-after must be a WAL position (a number below 2^64), not {value[:40]!r}")
    return int(value)
