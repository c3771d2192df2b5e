"""The Redis client of a URL: one Redis, or a Redis Cluster, behind one type.

`redis://`, `rediss://` and `unix://` name one Redis (redis-py's URLs). A cluster is named by
`redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://` with TLS):
any of its nodes will do, the others are tried when the first does not answer. redis-py's
RedisCluster follows MOVED and ASK, and finds the new master after a failover.
"""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

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
    names what is wrong with a URL (never with its password)."""
    scheme, _, rest = url.partition("://")
    if "decode_responses" in rest.partition("?")[2]:
        raise ValueError("the Redis URL sets decode_responses: runstream reads bytes; leave it out")
    try:
        if scheme.lower() not in CLUSTER_SCHEMES:
            return aioredis.from_url(url, **options)
        return _cluster(scheme.lower(), rest, options)
    except TypeError as exc:  # redis-py's answer to an option it does not know
        raise ValueError(f"an option in the Redis URL is not one redis-py knows ({exc})") from None


def _cluster(scheme: str, rest: str, options: dict[str, Any]) -> RedisCluster:
    """redis+cluster://[user:password@]host:port[,host:port...][/0][?option=value...]: the
    credentials go to redis-py as they are (a password may hold any character), the nodes as
    startup nodes, the options as the first node's URL carries them."""
    creds, _, hosts = rest.rpartition("@")
    hosts, _, query = hosts.partition("?")
    where, slash, db = hosts.partition("/")
    if slash and db not in ("", "0"):
        raise ValueError(f"{scheme}:// URLs have no database number (a cluster has only db 0): {db[:20]!r}")
    nodes = [_node(h) for h in where.split(",")]
    user, _, password = creds.partition(":")
    host = f"[{nodes[0].host}]" if ":" in nodes[0].host else nodes[0].host
    first = f"{CLUSTER_SCHEMES[scheme]}://{host}:{nodes[0].port}" + (f"?{query}" if query else "")
    if user:
        options["username"] = unquote(user)
    if password:
        options["password"] = unquote(password)
    return RedisCluster.from_url(first, startup_nodes=nodes[1:], **options)


def _node(text: str) -> ClusterNode:
    parts = urlsplit(f"//{text}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ValueError(f"a Redis Cluster URL names its nodes as host:port, separated by commas, not {text[:100]!r}")
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
