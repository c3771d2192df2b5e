"""Where reads go: PostgreSQL streaming replicas (--postgres-read-url), for reads that may lag,
and the primary for whatever a replica has not replayed yet.

A read must see what its caller wrote before it: the primary's WAL position (an LSN) after
that write is what the read waits for. This process notes the position after every write call
it serves (`noted`, by the doors in rpc/), and gRPC callers carry the position their own
writes got back (metadata `runstream-read-after`, set as READ_AFTER for the call), so a client
reads its writes whichever process served them. A position beyond the primary's own is
taken for the primary's (no caller can make reads wait for WAL that does not exist).

Each read asks its own connection, not a position kept for a URL: behind one URL (a load
balancer in front of several replicas) two connections may reach replicas at different positions. A read takes a replica
connection that has replayed the position; one behind it is waited for up to `wait_s`, then
the read goes to the primary. The reads of one call see one state or a later one: a call that
went to the primary stays there, and a later connection of the call must have replayed at
least what its first one had. A replica is used only once it is known to be a copy of this
deployment's database (same PostgreSQL system and database, same deployment id); one that
cannot be reached is left alone for DOWN_S.
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

from runstream.server.storage import installation

log = logging.getLogger(__name__)

Pooled = asyncpg.pool.PoolConnectionProxy  # a connection of one of the pools
READ_AFTER: ContextVar[int] = ContextVar("read_after", default=0)  # the caller's writes reached this LSN
_ON_PRIMARY: ContextVar[bool] = ContextVar("on_primary", default=False)  # this call read the primary
POLL_S = 0.01  # between looks at a replica that is behind
DOWN_S = 5.0  # a replica that failed is not tried again for this long
CONNECT_S = 2.0  # a replica that does not hand out a connection within this is busy: the primary reads
MAX_WAIT_S = 60.0

_PRIMARY_LSN = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"
# A replica's replayed position; a server not in recovery (a promoted replica, or a primary
# named as a replica) has all it wrote.
_REPLAYED_LSN = """SELECT (CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_replay_lsn(), '0/0'::pg_lsn)
                        ELSE pg_current_wal_lsn() END) - '0/0'::pg_lsn"""
_FAILURES = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError)


class NotAReplica(Exception):
    """A read URL that is no copy of this deployment's database."""


@dataclass
class _Replica:
    pool: asyncpg.Pool
    name: str  # printable, without its password
    verified: bool = False  # known to be a copy of this deployment's database
    down_until: float = 0.0
    refused: str = ""  # why it is never used (not a copy of this database)


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
        self.wait_s = min(wait_s, MAX_WAIT_S)
        self.seen = 0  # the primary's LSN after the last write this process served
        self.count = count  # "replica", "primary" (a read that could not use one) or "wait"
        self._turn = itertools.cycle(range(len(self.replicas) or 1))
        self._primary_lsn = 0  # the highest position the primary was seen at
        self._identity: tuple[str, str] | None = None  # the primary's (deployment id, instance)

    @property
    def tracking(self) -> bool:
        """Whether writes must be noted: reads may go to replicas."""
        return bool(self.replicas)

    async def noted(self) -> int:
        """After a write: the primary's LSN now, noted for this process's later reads."""
        if not self.replicas:
            return 0
        lsn = await self._primary_now()
        self.seen = max(self.seen, lsn)
        return lsn

    async def check(self) -> None:
        """At start: every replica that answers is a copy of this deployment's database
        (NotAReplica names the one that is not); one that does not answer is checked when it
        first does."""
        for replica in self.replicas:
            try:
                async with replica.pool.acquire() as conn:
                    await self._verify(replica, conn)
            except NotAReplica:
                raise
            except ValueError as exc:  # asyncpg's word for a URL it cannot use
                raise NotAReplica(f"--postgres-read-url {replica.name} is not a PostgreSQL URL: {exc}") from None
            except _FAILURES as exc:
                log.warning("replica %s does not answer yet (%s); it is checked when it does", replica.name, exc)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Pooled]:
        """A connection for a read that must see every write noted so far."""
        if self.replicas and not _ON_PRIMARY.get():
            needed = max(self.seen, READ_AFTER.get())
            if needed > self._primary_lsn:  # a position this process has not seen: the primary's caps it
                needed = min(needed, await self._primary_now())
            deadline = time.monotonic() + self.wait_s
            for replica in self._in_turn():
                found = await self._caught_up(replica, needed, deadline)
                if found is not None:
                    conn, replayed = found
                    READ_AFTER.set(max(READ_AFTER.get(), replayed))  # the call's later reads: no older
                    self.count("replica")
                    try:
                        yield conn
                    finally:
                        await replica.pool.release(conn)
                    return
            self.count("primary")
            _ON_PRIMARY.set(True)
        async with self.primary.acquire() as conn:
            yield conn

    def _in_turn(self) -> list[_Replica]:
        """The usable replicas, starting with the next one in turn."""
        first = next(self._turn)
        now = time.monotonic()
        ordered = self.replicas[first:] + self.replicas[:first]
        return [r for r in ordered if r.down_until <= now and not r.refused]

    async def _primary_now(self) -> int:
        self._primary_lsn = max(self._primary_lsn, int(await self.primary.fetchval(_PRIMARY_LSN)))
        return self._primary_lsn

    async def _caught_up(self, replica: _Replica, needed: int, deadline: float) -> tuple[Pooled, int] | None:
        """A connection of `replica` that has replayed `needed`, with the position it has; None
        if none has by `deadline`, or the replica is busy, down or not a copy of this database."""
        try:
            conn: Pooled = await asyncio.wait_for(replica.pool.acquire(), CONNECT_S)
        except asyncio.TimeoutError:  # every connection in use: busy, not down
            return None
        except _FAILURES as exc:
            self._down(replica, exc)
            return None
        handed = False
        try:
            await self._verify(replica, conn)
            waited = False
            while True:  # asked on this connection: one backend, one position
                replayed = int(await conn.fetchval(_REPLAYED_LSN))
                if replayed >= needed or time.monotonic() >= deadline:
                    break
                waited = True
                await asyncio.sleep(POLL_S)
            if waited:
                self.count("wait")
            if replayed < needed:
                return None
            handed = True
            return conn, replayed
        except NotAReplica as exc:
            replica.refused = str(exc)
            log.error("%s; reads never go there", exc)
            return None
        except _FAILURES as exc:
            self._down(replica, exc)
            return None
        finally:
            if not handed:  # also when the call is cancelled while it waits
                with contextlib.suppress(Exception):
                    await replica.pool.release(conn)

    async def _verify(self, replica: _Replica, conn: Pooled) -> None:
        """NotAReplica unless `conn` reaches a copy of this deployment's database."""
        if replica.verified:
            return
        if self._identity is None:
            async with self.primary.acquire() as primary:
                self._identity = (
                    (await installation.deployment(primary))[0],
                    await installation.database_instance(primary),
                )
        try:
            theirs = ((await installation.deployment(conn))[0], await installation.database_instance(conn))
        except asyncpg.UndefinedTableError:
            theirs = ("none", await installation.database_instance(conn))
        ours = self._identity
        same_system = theirs[1] == ours[1] or "" in (theirs[1].partition("/")[0], ours[1].partition("/")[0])
        if theirs[0] != ours[0] or not same_system:
            raise NotAReplica(
                f"--postgres-read-url {replica.name} is not a replica of this deployment's database "
                f"(deployment {theirs[0]} in {theirs[1]}, not {ours[0]} in {ours[1]})"
            )
        replica.verified = True

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
    digits = value.lstrip("0") or "0"
    if not (value.isascii() and value.isdigit()) or len(digits) > 20 or int(digits) >= 2**64:
        raise ValueError(f"runstream-read-after must be a WAL position (a number below 2^64), not {value[:40]!r}")
    return int(digits)
