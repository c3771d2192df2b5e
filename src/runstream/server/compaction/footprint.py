"""AdminService.GetStorage: what metric points cost in PostgreSQL, and the compactor's backlog."""

from __future__ import annotations

from typing import Any

import asyncpg

from runstream.server.storage import compaction
from runstream.wire.proto import admin_pb2 as adm


class StorageAdmin:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def GetStorage(self, req: adm.GetStorageRequest, ctx: Any) -> adm.StorageFootprint:
        async with self.pool.acquire() as conn:
            f = await compaction.footprint(conn)
        return adm.StorageFootprint(**f._asdict())  # the same fields, by name
