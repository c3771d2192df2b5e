"""The standard gRPC health service, driven by whether PostgreSQL and Redis answer.

Every role serves it (a load-only process too), so load balancers and Kubernetes probes
ask every process the same way. SERVING only while the backends this role needs answer
within `timeout_s`; NOT_SERVING for good once the server starts draining.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthWatch:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: aioredis.Redis | None,
        services: list[str],
        *,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
    ) -> None:
        self.servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # set at import, unseen
        self.pool = pool
        self.redis = redis  # None: this role does not need Redis
        self.services = ["", *services]  # "" is the whole server
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.problem: str | None = "not checked yet"
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.redis is not None:
            await self._warn_if_evicting()
        await self.check()
        self._task = asyncio.create_task(self._watch())

    async def drain(self) -> None:
        """NOT_SERVING from now on: balancers stop sending new work before the server stops."""
        if self._task is not None:
            self._task.cancel()
        await self.servicer.enter_graceful_shutdown()

    async def check(self) -> None:
        problem = await self._problem()
        if problem != self.problem:
            if problem:
                log.warning("health: NOT_SERVING, %s", problem)
            else:
                log.info("health: SERVING")
        self.problem = problem
        for service in self.services:
            await self.servicer.set(service, NOT_SERVING if problem else SERVING)

    async def _problem(self) -> str | None:
        try:
            await asyncio.wait_for(self.pool.fetchval("SELECT 1"), self.timeout_s)
        except (asyncpg.PostgresError, OSError, TimeoutError, asyncpg.InterfaceError) as exc:
            return f"PostgreSQL does not answer: {type(exc).__name__}: {exc}"
        if self.redis is not None:
            try:
                await asyncio.wait_for(self.redis.ping(), self.timeout_s)
                memory = await asyncio.wait_for(self.redis.info("memory"), self.timeout_s)
            except (aioredis.RedisError, OSError, TimeoutError) as exc:
                return f"Redis does not answer: {type(exc).__name__}: {exc}"
            return out_of_memory(memory)
        return None

    async def _warn_if_evicting(self) -> None:
        assert self.redis is not None
        try:
            memory = await asyncio.wait_for(self.redis.info("memory"), self.timeout_s)
        except (aioredis.RedisError, OSError, TimeoutError):
            return  # the health check says so
        policy = str(memory.get("maxmemory_policy", "noeviction"))
        if policy != "noeviction":
            log.warning(
                "Redis' maxmemory-policy is %s: when full it may evict batches not yet loaded; set noeviction, "
                "so a full Redis refuses appends (retried by the senders) instead",
                policy,
            )

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()


def out_of_memory(memory: dict[str, object]) -> str | None:
    """Redis' INFO memory says it refuses appends: over maxmemory with nothing to evict."""
    limit = int(str(memory.get("maxmemory", 0)))
    used = int(str(memory.get("used_memory", 0)))
    if limit and used >= limit and memory.get("maxmemory_policy", "noeviction") == "noeviction":
        return f"Redis is out of memory ({used:,} bytes used, maxmemory {limit:,}): it refuses appends"
    return None
