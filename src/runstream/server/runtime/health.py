"""The standard gRPC health service, driven by whether PostgreSQL and Redis answer.

Every role serves it (a load-only process too), so load balancers and Kubernetes probes
ask every process the same way. Each service is SERVING while the backends it needs answer
within `timeout_s` (the TrackingService needs only Redis: it takes the batches of runs it
knows while PostgreSQL is away); the whole server ("") follows what its role needs to take
metrics (Redis), or to serve at all. NOT_SERVING for good once the server starts draining.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from aiohttp import web
from grpc_health.v1 import health, health_pb2

from runstream.server.storage import db
from runstream.server.streams.client import REDIS_ERRORS, RedisClient, memory_of_masters

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# What each service needs to do its work.
NEEDS = {
    "runstream.v1.TrackingService": ("redis",),
    "runstream.v1.AdminService": ("redis",),
    "runstream.v1.QueryService": ("postgres",),
    "runstream.v1.RegistryService": ("postgres",),
    "runstream.v1.ArtifactService": ("postgres",),
}


def whole_server_needs(services: list[str]) -> tuple[str, ...]:
    """A process that takes metrics stays in its balancer while Redis answers; any other needs
    everything its services need (a loader alone: both)."""
    if "runstream.v1.TrackingService" in services:
        return ("redis",)
    needs = {need for s in services for need in NEEDS.get(s, ())}
    return tuple(sorted(needs)) or ("postgres", "redis")


class HealthWatch:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: RedisClient | None,
        services: list[str],
        *,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
    ) -> None:
        self.servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # set at import, unseen
        self.pool = pool
        self.redis = redis  # None: this role does not need Redis (its checks then pass)
        self.needs = {"": whole_server_needs(services), **{s: NEEDS.get(s, ("postgres", "redis")) for s in services}}
        if redis is None:  # role query: Redis is none of its business
            self.needs = {
                s: tuple(n for n in needs if n != "redis") or ("postgres",) for s, needs in self.needs.items()
            }
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.problem: str | None = None  # the first check logs only a problem
        self.statuses: dict[str, int] = dict.fromkeys(self.needs, NOT_SERVING)
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
        self.statuses = dict.fromkeys(self.statuses, NOT_SERVING)
        await self.servicer.enter_graceful_shutdown()

    async def check(self) -> None:
        found = {"postgres": await self._postgres_problem(), "redis": await self._redis_problem()}
        problems = "; ".join(p for p in found.values() if p) or None
        if problems != self.problem:
            if problems:
                log.warning("health: %s", problems)
            else:
                log.info("health: SERVING")
        self.problem = problems
        for service, needs in self.needs.items():
            self.statuses[service] = NOT_SERVING if any(found[n] for n in needs) else SERVING
            await self.servicer.set(service, self.statuses[service])

    async def _postgres_problem(self) -> str | None:
        try:
            await asyncio.wait_for(db.ping(self.pool), self.timeout_s)
        except Exception as exc:  # down, a connection killed, asyncpg's client state after it: all "no answer"
            return f"PostgreSQL does not answer: {type(exc).__name__}"
        return None

    async def _redis_problem(self) -> str | None:
        if self.redis is None:
            return None
        try:
            await asyncio.wait_for(self.redis.ping(), self.timeout_s)
            masters = await asyncio.wait_for(memory_of_masters(self.redis), self.timeout_s)
        except (*REDIS_ERRORS, OSError, TimeoutError) as exc:
            return f"Redis does not answer: {type(exc).__name__}"
        return next((p for m in masters if (p := out_of_memory(m))), None)

    async def _warn_if_evicting(self) -> None:
        assert self.redis is not None
        try:
            masters = await asyncio.wait_for(memory_of_masters(self.redis), self.timeout_s)
        except (*REDIS_ERRORS, OSError, TimeoutError):
            return  # the health check says so
        policies = {str(m.get("maxmemory_policy", "noeviction")) for m in masters} - {"noeviction"}
        if policies:
            log.warning(
                "Redis' maxmemory-policy is %s: when full it may evict batches not yet loaded; set noeviction, "
                "so a full Redis refuses appends (retried by the senders) instead",
                ", ".join(sorted(policies)),
            )

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()


def add_health_route(app: web.Application, watch: HealthWatch) -> None:
    """GET /healthz[?service=runstream.v1.X] on the HTTP port: 200 SERVING or 503 NOT_SERVING,
    the same answer as gRPC health, for probes that cannot speak gRPC over TLS (Kubernetes'
    gRPC probes have no TLS; its HTTPS probes do)."""

    async def healthz(request: web.Request) -> web.Response:
        service = request.query.get("service", "")
        if service not in watch.statuses:
            return web.Response(status=404, text=f"unknown service {service[:100]!r}\n")
        serving = watch.statuses[service] == SERVING
        return web.Response(status=200 if serving else 503, text="SERVING\n" if serving else "NOT_SERVING\n")

    app.router.add_get("/healthz", healthz)


def out_of_memory(memory: dict[str, object]) -> str | None:
    """Redis' INFO memory says it refuses appends: over maxmemory with nothing to evict."""
    limit = int(str(memory.get("maxmemory", 0)))
    used = int(str(memory.get("used_memory", 0)))
    if limit and used >= limit and memory.get("maxmemory_policy", "noeviction") == "noeviction":
        return f"Redis is out of memory ({used:,} bytes used, maxmemory {limit:,}): it refuses appends"
    return None
