"""proxy.redisconn against real servers: one server, a 3-master cluster, a sentinel."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from proxy.errors import ConfigError
from proxy.redisconn import Topology, connect, parse_redis_url

if TYPE_CHECKING:
    from tests.fixtures_redis import RedisClusterProcesses, RedisServer, SentinelProcess



@pytest.mark.parametrize(
    ("url", "topology", "nodes", "extra"),
    [
        ("redis://127.0.0.1:6379/0", Topology.SINGLE, (), {"tls": False}),
        ("rediss://cache.internal:6380/1", Topology.SINGLE, (), {"tls": True}),
        ("unix:///run/redis.sock", Topology.SINGLE, (), {}),
        ("redis+sentinel://s1:26379,s2:26380/cart-cache", Topology.SENTINEL,
         (("s1", 26379), ("s2", 26380)), {"service_name": "cart-cache", "db": 0}),
        ("redis+sentinel://:pw@s1/cart-cache/3", Topology.SENTINEL, (("s1", 26379),),
         {"db": 3, "password": "pw"}),
        ("rediss+sentinel://s1/m", Topology.SENTINEL, (("s1", 26379),), {"tls": True}),
        ("redis+cluster://10.0.0.1:7000,10.0.0.2:7001", Topology.CLUSTER,
         (("10.0.0.1", 7000), ("10.0.0.2", 7001)), {}),
        ("rediss+cluster://user:secret@c1", Topology.CLUSTER, (("c1", 6379),),
         {"tls": True, "username": "user", "password": "secret"}),
    ],
    ids=["plain", "tls", "unix", "sentinel", "sentinel-db-password", "sentinel-tls",
         "cluster", "cluster-tls-auth"],
)
def test_parse_forms(url, topology, nodes, extra):
    settings = parse_redis_url(url)
    assert settings.topology is topology
    assert settings.nodes == nodes
    for name, value in extra.items():
        assert getattr(settings, name) == value
    assert settings.socket_timeout == 0.05


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://x", "unsupported scheme 'http'"),
        ("redis+sentinel://s1:26379", "needs the service name"),
        ("redis+sentinel://s1:x/m", "port 'x' is not a number"),
        ("redis+cluster://c1:70000", "port 70000 out of range"),
        ("redis+cluster://c1/2", "a cluster has no databases"),
        ("redis+sentinel:///m", "empty host"),
    ],
    ids=["scheme", "no-service", "bad-port", "port-range", "cluster-db", "empty-host"],
)
def test_parse_errors_name_the_option(url, message):
    with pytest.raises(ConfigError, match="REDIS_URL: .*" + message):
        parse_redis_url(url)


def test_timeouts_are_validated():
    with pytest.raises(ConfigError, match="socket_timeout"):
        parse_redis_url("redis://x", socket_timeout=0)


async def test_plain_server(redis_server: RedisServer):
    client = connect(parse_redis_url(redis_server.url))
    try:
        assert isinstance(client, Redis)
        await client.set("k", b"v")
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()


async def test_cluster_of_three_masters(redis_cluster: RedisClusterProcesses):
    client = connect(parse_redis_url(redis_cluster.url))
    try:
        assert isinstance(client, RedisCluster)
        keys = [f"key-{i}" for i in range(30)]
        for key in keys:
            await client.set(key, key.encode())
        assert await client.mget_nonatomic(keys) == [k.encode() for k in keys]
        masters = {node.port for node in client.get_primaries()}
        assert masters == {s.port for s in redis_cluster.servers}
        # the keys landed on more than one master
        holders = {client.get_node_from_key(k).port for k in keys}
        assert len(holders) == 3
    finally:
        await client.aclose()


async def test_sentinel_finds_the_master(redis_sentinel: SentinelProcess,
                                         redis_server: RedisServer):
    url = f"redis+sentinel://127.0.0.1:{redis_sentinel.port}/{redis_sentinel.service}"
    client = connect(parse_redis_url(url, socket_timeout=1.0, connect_timeout=1.0))
    try:
        await client.set("through-sentinel", b"1")
        assert redis_server.command("GET", "through-sentinel") == "$1\r\n1\r\n"
        assert await client.get("through-sentinel") == b"1"
    finally:
        await client.aclose()
