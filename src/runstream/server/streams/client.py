"""The Redis client of a URL: one Redis, or a Redis Cluster, behind one type.

`redis://`, `rediss://` and `unix://` name one Redis (redis-py's URLs). A cluster is named by
`redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://` with TLS):
any of its nodes will do, the others are tried when the first does not answer. redis-py's
RedisCluster follows MOVED and ASK, and finds the new master after a failover.
"""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException

RedisClient: TypeAlias = aioredis.Redis | RedisCluster
# What Redis or a cluster raises when it is away, refusing, or between masters (a cluster
# without a node for a slot raises RedisClusterException, which is no RedisError).
REDIS_ERRORS = (aioredis.RedisError, RedisClusterException)

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def open_redis(url: str, **options: Any) -> RedisClient:
    """A client of the Redis or Redis Cluster at `url` (connects on first use). ValueError
    names what is wrong with a URL."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in CLUSTER_SCHEMES:
        return aioredis.from_url(url, **options)
    creds, _, hosts = rest.rpartition("@")
    where, slash, tail = hosts.partition("/")
    nodes = [_node(h) for h in where.split(",")]
    if slash and tail.split("?", 1)[0] not in ("", "0"):
        raise ValueError(f"{scheme}:// URLs have no database number (a cluster has only db 0): {tail!r}")
    first = f"{CLUSTER_SCHEMES[scheme.lower()]}://{creds + '@' if creds else ''}{nodes[0].host}:{nodes[0].port}"
    if "?" in tail:
        first += "?" + tail.split("?", 1)[1]
    return RedisCluster.from_url(first, startup_nodes=nodes[1:], **options)


def _node(text: str) -> ClusterNode:
    parts = urlsplit(f"//{text}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ValueError(f"a Redis Cluster URL names its nodes as host:port, separated by commas, not {text!r}")
    return ClusterNode(parts.hostname, port)


def is_cluster(redis: RedisClient) -> bool:
    return isinstance(redis, RedisCluster)


async def memory_of_masters(redis: RedisClient) -> list[dict[str, Any]]:
    """INFO memory of every master (the one Redis, or each of a cluster's)."""
    if isinstance(redis, RedisCluster):
        found: dict[str, dict[str, Any]] = await redis.info("memory", target_nodes=RedisCluster.PRIMARIES)
        return list(found.values())
    return [await redis.info("memory")]


async def master_of(redis: RedisClient, key: str) -> ClusterNode | None:
    """The cluster node that serves `key` as far as this client knows (None: not a cluster)."""
    if not isinstance(redis, RedisCluster):
        return None
    await redis.initialize()  # once: the slots come with the first command
    return redis.get_node_from_key(key)
