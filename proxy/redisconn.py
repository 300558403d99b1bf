"""Build the ``redis.asyncio`` client from settings: plain, TLS, Sentinel or Cluster.

``parse_redis_url`` turns one URL (``REDIS_URL``) into frozen ``RedisSettings``; ``connect`` builds
the client; the caller owns it and closes it with ``await client.aclose()``. Forms:

* ``redis://[user:password@]host:port/db`` and ``unix:///path/redis.sock`` — one server;
* ``rediss://...`` — the same over TLS (``?ssl_ca_certs=/path/ca.pem``, ``?ssl_cert_reqs=required``
  as redis-py's ``from_url`` reads them);
* ``redis+sentinel://[user:password@]host1:26379,host2:26379/service_name[/db]`` (or
  ``rediss+sentinel://`` for TLS to the master) — ask the sentinels for the master of
  ``service_name``;
* ``redis+cluster://host1:7000,host2:7001`` (or ``rediss+cluster://``) — Redis Cluster; one
  reachable node is enough, the client discovers the rest.

Socket and connect timeouts default to tens of milliseconds: a cache that answers later than that
is useless on a request path, and the breaker (``proxy.breaker``) takes over. This module performs
no I/O until the client's first command.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Final
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from proxy.errors import ConfigError

__all__ = ["RedisClient", "RedisSettings", "Topology", "connect", "parse_redis_url"]

RedisClient = Redis | RedisCluster

DEFAULT_SOCKET_TIMEOUT: Final = 0.05
DEFAULT_CONNECT_TIMEOUT: Final = 0.1
DEFAULT_MAX_CONNECTIONS: Final = 64


class Topology(enum.StrEnum):
    SINGLE = "single"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """How to reach Redis; build with ``parse_redis_url`` so every field is checked once."""

    topology: Topology
    url: str | None = field(default=None, repr=False)
    """For ``single``: the URL as given to ``Redis.from_url`` (it may hold a password, so it is
    kept out of ``repr``)."""
    nodes: tuple[tuple[str, int], ...] = ()
    """For ``sentinel``: the sentinels; for ``cluster``: the startup nodes."""
    service_name: str | None = None
    """For ``sentinel``: the monitored master's name."""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS


def _nodes(netloc: str, default_port: int, option: str) -> tuple[tuple[str, int], ...]:
    nodes: list[tuple[str, int]] = []
    for part in netloc.split(","):
        host, _, port = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "")
        host = host.strip("[]")
        if not host:
            raise ConfigError(f"{option}: empty host in {netloc!r}")
        try:
            number = int(port) if port else default_port
        except ValueError:
            raise ConfigError(f"{option}: port {port!r} is not a number") from None
        if not 0 < number < 65536:
            raise ConfigError(f"{option}: port {number} out of range")
        nodes.append((host, number))
    return tuple(nodes)


def parse_redis_url(
    url: str,
    *,
    option: str = "REDIS_URL",
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> RedisSettings:
    """Validate a Redis URL; ``ConfigError`` names ``option`` and what is wrong.

    >>> parse_redis_url("redis+sentinel://s1:26379,s2/cart-cache/2").nodes
    (('s1', 26379), ('s2', 26379))
    >>> parse_redis_url("redis+cluster://127.0.0.1:7000").topology
    <Topology.CLUSTER: 'cluster'>
    """
    for name, value in (("socket_timeout", socket_timeout), ("connect_timeout", connect_timeout)):
        if not 0 < value <= 10:
            raise ConfigError(f"{option}: {name} must be in (0, 10] seconds, got {value}")
    if max_connections < 1:
        raise ConfigError(f"{option}: max_connections must be at least 1, got {max_connections}")
    limits = RedisSettings(
        Topology.SINGLE,
        socket_timeout=socket_timeout,
        connect_timeout=connect_timeout,
        max_connections=max_connections,
    )
    scheme, _, _ = url.partition("://")
    scheme = scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        _check_single(url, scheme, option)
        return replace(limits, url=url, tls=scheme == "rediss")
    base, _, kind = scheme.partition("+")
    if base not in ("redis", "rediss") or kind not in ("sentinel", "cluster"):
        raise ConfigError(
            f"{option}: unsupported scheme {scheme!r} (expected redis, rediss, unix, "
            "redis+sentinel, rediss+sentinel, redis+cluster, rediss+cluster)"
        )
    # urlsplit cannot read several host:port pairs, so take the netloc apart by hand.
    rest = url.split("://", 1)[1]
    netloc, _, path = rest.partition("/")
    path, _, query = path.partition("?")
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    if query:
        raise ConfigError(f"{option}: query options are not supported with {scheme}://")
    if kind == "sentinel":
        segments = [s for s in path.split("/") if s]
        if not segments:
            raise ConfigError(f"{option}: redis+sentinel:// needs the service name as its path")
        db = 0
        if len(segments) > 1:
            if not segments[1].isdigit():
                raise ConfigError(f"{option}: database {segments[1]!r} is not a number")
            db = int(segments[1])
        return replace(
            limits,
            topology=Topology.SENTINEL,
            nodes=_nodes(hosts, 26379, option),
            service_name=unquote(segments[0]),
            db=db,
            username=unquote(username) or None,
            password=unquote(password) or None,
            tls=base == "rediss",
        )
    if path.strip("/"):
        raise ConfigError(f"{option}: a cluster has no databases; remove the path {path!r}")
    return replace(
        limits,
        topology=Topology.CLUSTER,
        nodes=_nodes(hosts, 6379, option),
        username=unquote(username) or None,
        password=unquote(password) or None,
        tls=base == "rediss",
    )


def _check_single(url: str, scheme: str, option: str) -> None:
    """What ``Redis.from_url`` would only find out at the first command."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{option}: not a valid URL: {exc}") from None
    if scheme == "unix":
        if not parts.path:
            raise ConfigError(f"{option}: unix:// needs the socket path")
        return
    if not parts.hostname:
        raise ConfigError(f"{option}: no host in {scheme}://")
    if port == 0:
        raise ConfigError(f"{option}: port 0 is not a port")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ConfigError(f"{option}: database {database!r} is not a number")


class _SentinelMaster(Redis):
    """The master found through sentinels; closing it closes the sentinel connections too."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel_manager is not None:
            for client in self.sentinel_manager.sentinels:
                await client.aclose()


def connect(settings: RedisSettings) -> RedisClient:
    """A client for ``settings``; nothing is sent until the first command."""
    if settings.topology is Topology.SINGLE:
        if settings.url is None:
            raise ConfigError("redis: a single-server setting needs a URL")
        return Redis.from_url(
            settings.url,
            socket_timeout=settings.socket_timeout,
            socket_connect_timeout=settings.connect_timeout,
            max_connections=settings.max_connections,
        )
    if settings.topology is Topology.CLUSTER:
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in settings.nodes],
            username=settings.username,
            password=settings.password,
            ssl=settings.tls,
            socket_timeout=settings.socket_timeout,
            socket_connect_timeout=settings.connect_timeout,
            max_connections=settings.max_connections,
        )
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(settings.nodes),
        socket_timeout=settings.socket_timeout,
        sentinel_kwargs={
            "socket_timeout": settings.socket_timeout,
            "socket_connect_timeout": settings.connect_timeout,
        },
    )
    if settings.service_name is None:
        raise ConfigError("redis: a sentinel setting needs the service name")
    master: _SentinelMaster = sentinel.master_for(
        settings.service_name,
        redis_class=_SentinelMaster,
        db=settings.db,
        username=settings.username,
        password=settings.password,
        ssl=settings.tls,
        socket_connect_timeout=settings.connect_timeout,
        max_connections=settings.max_connections,
    )
    master.sentinel_manager = sentinel
    return master
