"""The Redis key layout and the Redis URLs: each shard's keys in one hash slot of a cluster,
the shards in different slots, and cluster URLs read as operators write them."""

from __future__ import annotations

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from runstream.server.runtime.connections import printable_error, printable_url
from runstream.server.streams.client import is_cluster_url, open_redis
from runstream.server.streams.keys import Keys


def test_each_shards_keys_share_one_slot_and_the_shards_do_not() -> None:
    keys = Keys("runstream", 8)
    for shard in range(8):
        assert key_slot(keys.stream(shard).encode()) == key_slot(keys.dead_letters(shard).encode())
        assert keys.shard_of_stream(keys.stream(shard)) == shard
        assert keys.shard_of_stream(keys.stream(shard).encode()) == shard
    assert len({key_slot(s.encode()) for s in keys.streams()}) == 8
    assert keys.shard_of_stream("runstream:metrics:3") == 0  # an old name: no shard of today's
    assert keys.shard_of_stream("{runstream:99}:metrics") == 0  # beyond the shards
    assert all(any(_glob(p, k) for p in keys.patterns()) for k in [*keys.streams(), keys.binding])
    assert not any(_glob(p, k) for p in keys.patterns() for k in Keys("other", 8).streams())


def _glob(pattern: str, key: str) -> bool:
    return key.startswith(pattern.rstrip("*"))


@pytest.mark.parametrize(
    ("url", "nodes"),
    [
        ("redis+cluster://10.0.0.1:7000", ["10.0.0.1:7000"]),
        ("redis+cluster://10.0.0.1:7000,10.0.0.2:7001/", ["10.0.0.1:7000", "10.0.0.2:7001"]),
        ("rediss+cluster://user:secret@a.example:6380,b.example:6380/0", ["a.example:6380", "b.example:6380"]),
    ],
)
def test_cluster_urls_name_their_seed_nodes(url: str, nodes: list[str]) -> None:
    client = open_redis(url)
    assert isinstance(client, RedisCluster) and is_cluster_url(url)
    assert sorted(n.name for n in client.nodes_manager.startup_nodes.values()) == nodes
    if "secret" in url:
        assert client.connection_kwargs["password"] == "secret" and client.connection_kwargs["username"] == "user"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://10.0.0.1", "host:port"),
        ("redis+cluster://10.0.0.1:7000,:7001", "host:port"),
        ("redis+cluster://10.0.0.1:port", "host:port"),
        ("redis+cluster://10.0.0.1:7000/2", "no database number"),
    ],
)
def test_a_wrong_cluster_url_says_what_is_wrong_without_its_password(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        open_redis(url.replace("://", "://u:hunter2@"))
    assert "hunter2" not in str(caught.value)


def test_a_plain_url_is_one_redis() -> None:
    assert not isinstance(open_redis("redis://127.0.0.1:6379/0"), RedisCluster)
    assert not is_cluster_url("redis://127.0.0.1:6379/0") and not is_cluster_url("unix:///tmp/redis.sock")


def test_an_ipv6_seed_and_a_password_with_any_character_reach_redis_py_intact() -> None:
    client = open_redis("redis+cluster://us%40er:hun/ter#2@[::1]:7000,[::1]:7001?socket_timeout=3")
    assert isinstance(client, RedisCluster)
    assert sorted(n.name for n in client.nodes_manager.startup_nodes.values()) == ["::1:7000", "::1:7001"]
    assert client.connection_kwargs["password"] == "hun/ter#2" and client.connection_kwargs["username"] == "us@er"
    assert client.connection_kwargs["socket_timeout"] == 3


@pytest.mark.parametrize(
    "url", ["redis+cluster://10.0.0.1:7000/0?foo=bar", "redis://10.0.0.1:6379/0?decode_responses=true"]
)
def test_an_option_redis_py_does_not_know_or_runstream_cannot_take_is_a_value_error(url: str) -> None:
    with pytest.raises(ValueError, match=r"option|decode_responses"):
        open_redis(url)


def test_printed_urls_and_errors_hold_no_piece_of_the_password() -> None:
    url = "redis+cluster://u:hunter2/x@127.0.0.1:7000/0?password=SECRETPW&socket_timeout=3"
    shown = printable_url(url)
    assert "hunter2" not in shown and "SECRETPW" not in shown and "socket_timeout=3" in shown
    assert printable_error("Port could not be cast to integer value as 'hunter2'", url) == (
        "Port could not be cast to integer value as '***'"
    )
