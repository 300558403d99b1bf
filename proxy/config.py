"""``Settings``: the policy plus the runtime knobs of ``serve``, parsed and validated once.

The one place that reads the environment. Precedence, lowest first: built-in defaults, the
policy file's ``proxy:`` section, ``CART_PROXY_*`` environment variables, command-line flags.
Every problem is a ``ConfigError`` naming where the bad value came from (``<file>: proxy.key``,
``env CART_PROXY_PORT`` or ``--port``) and what is wrong; all problems are reported at once.

Environment variables (each overrides the matching ``proxy:`` key):

=============================== ============================ ===========================
variable                        key                          default
=============================== ============================ ===========================
CART_PROXY_CONFIG               (the policy file itself)     the shipped policy
CART_PROXY_HOST                 listen.host                  127.0.0.1
CART_PROXY_PORT                 listen.port                  8080
CART_PROXY_UPSTREAM             upstream                     http://127.0.0.1:8081
CART_PROXY_WORKERS              workers                      1
CART_PROXY_METRICS_PORT         metrics_port (0 = off)       9108
CART_PROXY_GRACE_PERIOD         grace_period (seconds)       10
CART_PROXY_MAX_BODY_BYTES       limits.max_body_bytes        1 MiB
CART_PROXY_MAX_DECODED_BYTES    limits.max_decoded_bytes     8 MiB
CART_PROXY_MAX_JSON_DEPTH       limits.max_json_depth        64 (1..253)
CART_PROXY_NON_JSON             limits.non_json              reject (reject | pass)
CART_PROXY_CONNECT_TIMEOUT      timeouts.connect (seconds)   5
CART_PROXY_READ_TIMEOUT         timeouts.read (seconds)      30
CART_PROXY_TOTAL_TIMEOUT        timeouts.total (seconds)     60 (0 = none)
CART_PROXY_POOL_SIZE            pool_size                    256
CART_PROXY_LOG_LEVEL            log_level                    INFO
CART_PROXY_ADMIN_PORT           admin.port (0 = off)         0 (off)
CART_PROXY_ADMIN_TOKEN          (never in the file)          none; required with a port
CART_PROXY_CACHE_LOCAL_SIZE     cache.local_size             10000 entries
CART_PROXY_CACHE_LOCAL_TTL      cache.local_ttl (seconds)    60
CART_PROXY_RESOLVER_BUDGET      resolver.budget (seconds)    2 (0 < b <= 30)
CART_PROXY_RESOLVER_MAX_HOPS    resolver.max_hops            5 (1..10)
CART_PROXY_RESOLVER_CACHE_TTL   resolver.cache_ttl (seconds) 86400
CART_PROXY_RESOLVER_ALLOW_PORTS resolver.allow_ports         none (80 and 443 always)
CART_PROXY_RESOLVER_ALLOW_NETS  resolver.allow_networks      none (tests only: 127.0.0.0/8)
REDIS_URL                       (the shared state)           none: in-memory, one replica
=============================== ============================ ===========================

List values (ports, networks) are YAML lists in the file and comma-separated in the
environment. The admin token and the Redis URL carry secrets, so they come from the environment
only (``REDIS_URL`` may hold a password; a token in the file is refused).
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from yarl import URL

from proxy.core.policy import Policy
from proxy.errors import ConfigError
from proxy.policyfile import load_policy
from proxy.redisconn import RedisSettings, parse_redis_url
from proxy.resolver import ResolverSettings

__all__ = [
    "Limits",
    "NonJSON",
    "Settings",
    "Timeouts",
    "load_settings",
    "settings_from_policy",
    "with_overrides",
]

MIB: Final = 1024 * 1024
ADMIN_TOKEN_ENV: Final = "CART_PROXY_ADMIN_TOKEN"
REDIS_URL_ENV: Final = "REDIS_URL"
MIN_TOKEN_LENGTH: Final = 16
ORJSON_MAX_DEPTH: Final = 254
"""orjson refuses to serialise deeper documents, so an edited body must stay below it."""


class NonJSON(enum.StrEnum):
    """What to do with a routed write whose body is not JSON."""

    REJECT = "reject"
    PASS = "pass"


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = MIB
    """Largest body read for inspection, as received (compressed or not); over it: 413."""
    max_decoded_bytes: int = 8 * MIB
    """Largest body after Content-Encoding is undone; over it (a bomb): 413."""
    max_json_depth: int = 64
    non_json: NonJSON = NonJSON.REJECT


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. ``total`` bounds an inspected exchange; streamed pass-through is bounded by
    ``connect`` and ``read`` (the longest silence) only, so a large transfer is never cut."""

    connect: float = 5.0
    read: float = 30.0
    total: float | None = 60.0


@dataclass(frozen=True, slots=True)
class Settings:
    policy: Policy
    host: str = "127.0.0.1"
    port: int = 8080
    upstream: URL = field(default_factory=lambda: URL("http://127.0.0.1:8081"))
    limits: Limits = Limits()
    timeouts: Timeouts = Timeouts()
    grace_period: float = 10.0
    """Seconds in-flight requests get to finish after SIGTERM."""
    metrics_port: int = 9108
    """Metrics and health port of worker 0; worker i serves on ``metrics_port + i``; 0 = off."""
    workers: int = 1
    pool_size: int = 256
    """Most connections kept open to the upstream (keep-alive pool)."""
    log_level: str = "INFO"
    redis: RedisSettings | None = None
    """Where the fleet's flags and resolved short links live (``REDIS_URL``); None: in memory,
    right for one replica."""
    admin_port: int = 0
    """Port of the admin API (served by worker 0 only); 0 = off. Never inside the metrics
    range ``metrics_port .. metrics_port + workers - 1`` nor the proxy port."""
    admin_token: str | None = field(default=None, repr=False)
    """Bearer token of the admin API, from ``CART_PROXY_ADMIN_TOKEN`` only; kept out of repr."""
    cache_local_size: int = 10_000
    """Entries of the in-process tier of the short-link cache."""
    cache_local_ttl: float = 60.0
    """Seconds a replica keeps its own copy of a cached entry (Redis keeps it longer)."""
    resolver: ResolverSettings | None = None
    """Short-link resolution; None (settings built by hand): the policy's shorteners with the
    defaults. ``settings_from_policy`` always fills it in."""


_LIMITS: Final = Limits()
_TIMEOUTS: Final = Timeouts()
_D: Final[Mapping[str, Any]] = {
    "host": "127.0.0.1", "port": 8080, "grace_period": 10.0, "metrics_port": 9108, "workers": 1,
    "pool_size": 256, "log_level": "INFO",
}  # fmt: skip
_ENV: Final[Mapping[str, str]] = {
    "CART_PROXY_HOST": "listen.host",
    "CART_PROXY_PORT": "listen.port",
    "CART_PROXY_UPSTREAM": "upstream",
    "CART_PROXY_WORKERS": "workers",
    "CART_PROXY_METRICS_PORT": "metrics_port",
    "CART_PROXY_GRACE_PERIOD": "grace_period",
    "CART_PROXY_MAX_BODY_BYTES": "limits.max_body_bytes",
    "CART_PROXY_MAX_DECODED_BYTES": "limits.max_decoded_bytes",
    "CART_PROXY_MAX_JSON_DEPTH": "limits.max_json_depth",
    "CART_PROXY_NON_JSON": "limits.non_json",
    "CART_PROXY_CONNECT_TIMEOUT": "timeouts.connect",
    "CART_PROXY_READ_TIMEOUT": "timeouts.read",
    "CART_PROXY_TOTAL_TIMEOUT": "timeouts.total",
    "CART_PROXY_POOL_SIZE": "pool_size",
    "CART_PROXY_LOG_LEVEL": "log_level",
    "CART_PROXY_ADMIN_PORT": "admin.port",
    "CART_PROXY_CACHE_LOCAL_SIZE": "cache.local_size",
    "CART_PROXY_CACHE_LOCAL_TTL": "cache.local_ttl",
    "CART_PROXY_RESOLVER_BUDGET": "resolver.budget",
    "CART_PROXY_RESOLVER_MAX_HOPS": "resolver.max_hops",
    "CART_PROXY_RESOLVER_CACHE_TTL": "resolver.cache_ttl",
    "CART_PROXY_RESOLVER_ALLOW_PORTS": "resolver.allow_ports",
    "CART_PROXY_RESOLVER_ALLOW_NETS": "resolver.allow_networks",
}
_FLAGS: Final[Mapping[str, str]] = {
    "host": "listen.host",
    "port": "listen.port",
    "upstream": "upstream",
    "workers": "workers",
    "metrics_port": "metrics_port",
    "admin_port": "admin.port",
}
_KEYS: Final = frozenset(_ENV.values())
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_UNITS: Final = {None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 10**6, "MiB": MIB,
                 "GB": 10**9, "GiB": 1024 * MIB}  # fmt: skip


def _flatten(section: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in section.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class _Checker:
    """Converts one raw value per key, recording errors that name the value's origin."""

    def __init__(self, raw: Mapping[str, tuple[Any, str]]) -> None:
        self.raw = raw
        self.errors: list[str] = []

    def get(self, key: str, default: Any, convert: Callable[[Any], Any], what: str) -> Any:
        if key not in self.raw:
            return default
        value, origin = self.raw[key]
        try:
            return convert(value)
        except (TypeError, ValueError):
            self.errors.append(f"{origin}: expected {what}, got {value!r}")
            return default


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool):
            raise TypeError(value)
        number = int(value)
        if not low <= number <= high:
            raise ValueError(value)
        return number

    return convert


def _size(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, int):
        number = value
    else:
        match = _SIZE.match(str(value))
        if match is None:
            raise ValueError(value)
        number = int(match[1]) * _UNITS[match[2]]
    if number < 1:
        raise ValueError(value)
    return number


def _seconds(allow_none: bool) -> Callable[[Any], float | None]:
    def convert(value: Any) -> float | None:
        if isinstance(value, bool):
            raise TypeError(value)
        number = float(value)
        if allow_none and number == 0:
            return None
        if not 0 < number <= 3600:
            raise ValueError(value)
        return number

    return convert


def _upstream(value: Any) -> URL:
    url = URL(str(value))
    if url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/"):
        raise ValueError(value)
    if url.query_string or url.fragment or url.user:
        raise ValueError(value)
    return url.with_path("")


def _host(value: Any) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(value)
    return value


def _items(value: Any) -> list[Any]:
    """A YAML list, or a comma-separated string (the environment's form)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    raise TypeError(value)


def _ports(value: Any) -> tuple[int, ...]:
    convert = _integer(1, 65535)
    return tuple(convert(item) for item in _items(value))


def _networks(value: Any) -> tuple[str, ...]:
    networks = []
    for item in _items(value):
        networks.append(str(ipaddress.ip_network(str(item))))  # ValueError names the bad one
    return tuple(networks)


def _resolver(policy: Policy, check: _Checker) -> ResolverSettings | None:
    defaults = ResolverSettings(shorteners=frozenset())
    options = {
        "budget": check.get("resolver.budget", defaults.budget, _seconds_up_to(30),
                            "seconds, more than 0 and at most 30"),
        "max_hops": check.get("resolver.max_hops", defaults.max_hops, _integer(1, 10),
                              "a whole number 1..10"),
        "cache_ttl": check.get("resolver.cache_ttl", defaults.cache_ttl, _seconds_up_to(30 * 86400),
                               "seconds, more than 0 and at most 30 days"),
    }
    ports = check.get("resolver.allow_ports", (), _ports,
                      "a list of port numbers 1..65535 (comma-separated in the environment)")
    networks = check.get("resolver.allow_networks", (), _networks,
                         "a list of networks such as 127.0.0.0/8 (comma-separated in the "
                         "environment)")
    try:
        return ResolverSettings.build(shorteners=policy.shorteners, allow_ports=ports,
                                      allow_networks=networks, option="proxy.resolver",
                                      **options)
    except ConfigError as exc:
        check.errors.extend(exc.errors)
        return None


def _seconds_up_to(high: float) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        if isinstance(value, bool):
            raise TypeError(value)
        number = float(value)
        if not 0 < number <= high:
            raise ValueError(value)
        return number

    return convert


def _redis(env: Mapping[str, str] | None, errors: list[str]) -> RedisSettings | None:
    url = (env or {}).get(REDIS_URL_ENV, "").strip()
    if not url:
        return None
    try:
        return parse_redis_url(url, option=f"env {REDIS_URL_ENV}")
    except ConfigError as exc:
        errors.extend(exc.errors)
        return None


def _admin_token(section: Mapping[str, Any], env: Mapping[str, str] | None, source: str,
                 errors: list[str]) -> str | None:
    if "admin.token" in section:
        errors.append(f"{source}: proxy.admin.token: the admin token is never read from the "
                      f"file (it would be in every copy of the policy); set env {ADMIN_TOKEN_ENV}")
    token = (env or {}).get(ADMIN_TOKEN_ENV, "").strip()
    if token and len(token) < MIN_TOKEN_LENGTH:
        errors.append(f"env {ADMIN_TOKEN_ENV}: too short ({len(token)} characters; at least "
                      f"{MIN_TOKEN_LENGTH}, e.g. from `openssl rand -hex 32`)")
    return token or None


def _check_ports(settings: Settings, raw: Mapping[str, tuple[Any, str]], errors: list[str]) -> None:
    """The admin port needs a token, and must not collide with the proxy or metrics ports."""
    if not settings.admin_port:
        return
    origin = raw["admin.port"][1] if "admin.port" in raw else "proxy.admin.port"
    if settings.admin_token is None:
        errors.append(f"{origin}: the admin API needs a bearer token: set env {ADMIN_TOKEN_ENV} "
                      "(or leave the admin port unset to keep the API off)")
    if settings.admin_port == settings.port:
        errors.append(f"{origin}: admin port {settings.admin_port} is the proxy port")
    last = settings.metrics_port + settings.workers - 1
    if settings.metrics_port and settings.metrics_port <= settings.admin_port <= last:
        errors.append(f"{origin}: admin port {settings.admin_port} collides with the metrics "
                      f"ports {settings.metrics_port}..{last} (worker i serves metrics on "
                      "metrics_port + i); choose a port outside that range")


def settings_from_policy(
    policy: Policy,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings for ``policy``: its ``proxy:`` section, then ``env``, then ``overrides``.

    ``overrides`` are command-line values keyed by flag name (``host``, ``port``, ``upstream``,
    ``workers``, ``metrics_port``, ``admin_port``); None values are ignored. ``REDIS_URL`` and
    ``CART_PROXY_ADMIN_TOKEN`` are read from ``env`` only.
    """
    raw: dict[str, tuple[Any, str]] = {}
    errors: list[str] = []
    section = _flatten(policy.runtime)
    for key, value in section.items():
        if key == "admin.token":
            continue  # refused with its own message below
        if key not in _KEYS:
            errors.append(f"{policy.source}: proxy.{key}: unknown key "
                          f"(expected one of {', '.join(sorted(_KEYS))})")
        else:
            raw[key] = (value, f"{policy.source}: proxy.{key}")
    for name, key in _ENV.items():
        if env is not None and name in env and env[name] != "":
            raw[key] = (env[name], f"env {name}")
    for flag, value in (overrides or {}).items():
        if value is not None:
            raw[_FLAGS[flag]] = (value, f"--{flag.replace('_', '-')}")
    check = _Checker(raw)
    port = _integer(0, 65535)
    limits = Limits(
        max_body_bytes=check.get("limits.max_body_bytes", _LIMITS.max_body_bytes, _size,
                                 "a size such as 1048576 or '1MiB'"),
        max_decoded_bytes=check.get("limits.max_decoded_bytes", _LIMITS.max_decoded_bytes, _size,
                                    "a size such as 8388608 or '8MiB'"),
        max_json_depth=check.get("limits.max_json_depth", _LIMITS.max_json_depth,
                                 _integer(1, ORJSON_MAX_DEPTH - 1),
                                 f"a whole number from 1 to {ORJSON_MAX_DEPTH - 1}"),
        non_json=check.get("limits.non_json", NonJSON.REJECT, NonJSON, "'reject' or 'pass'"),
    )
    timeouts = Timeouts(
        connect=check.get("timeouts.connect", _TIMEOUTS.connect, _seconds(False),
                          "seconds, more than 0 and at most 3600"),
        read=check.get("timeouts.read", _TIMEOUTS.read, _seconds(False),
                       "seconds, more than 0 and at most 3600"),
        total=check.get("timeouts.total", _TIMEOUTS.total, _seconds(True),
                        "seconds, at most 3600 (0 = no limit)"),
    )
    settings = Settings(
        policy=policy,
        host=check.get("listen.host", _D['host'], _host, "a host name or address"),
        port=check.get("listen.port", _D['port'], port, "a port number 0..65535"),
        upstream=check.get("upstream", URL("http://127.0.0.1:8081"), _upstream,
                           "an http(s) origin such as http://10.0.0.5:8081 (no path or query)"),
        limits=limits,
        timeouts=timeouts,
        grace_period=check.get("grace_period", _D['grace_period'], _seconds(False),
                               "seconds, more than 0 and at most 3600"),
        metrics_port=check.get("metrics_port", _D['metrics_port'], port,
                               "a port number 0..65535 (0 = off)"),
        workers=check.get("workers", _D['workers'], _integer(1, 64), "a whole number 1..64"),
        pool_size=check.get("pool_size", _D['pool_size'], _integer(1, 10000),
                            "a whole number 1..10000"),
        log_level=check.get("log_level", _D['log_level'], _log_level,
                            "one of DEBUG, INFO, WARNING, ERROR"),
        redis=_redis(env, errors),
        admin_port=check.get("admin.port", 0, port, "a port number 0..65535 (0 = off)"),
        admin_token=_admin_token(section, env, policy.source, errors),
        cache_local_size=check.get("cache.local_size", 10_000, _integer(1, 10_000_000),
                                   "a whole number 1..10000000"),
        cache_local_ttl=check.get("cache.local_ttl", 60.0, _seconds_up_to(86400),
                                  "seconds, more than 0 and at most 86400"),
        resolver=_resolver(policy, check),
    )
    errors.extend(check.errors)
    _check_ports(settings, raw, errors)
    if settings.limits.max_decoded_bytes < settings.limits.max_body_bytes:
        errors.append(f"{policy.source}: proxy.limits.max_decoded_bytes: must be at least "
                      f"limits.max_body_bytes ({settings.limits.max_body_bytes})")
    if settings.workers > 1 and settings.metrics_port and settings.metrics_port + \
            settings.workers - 1 > 65535:
        errors.append(f"{policy.source}: proxy.metrics_port: metrics_port + workers - 1 "
                      "exceeds 65535")
    if errors:
        raise ConfigError(errors)
    return settings


def _log_level(value: Any) -> str:
    name = str(value).upper()
    if name not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(value)
    return name


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the policy file (``path``, else ``CART_PROXY_CONFIG``, else the shipped policy)
    and build ``Settings`` from it, ``env`` (default ``os.environ``) and ``overrides``."""
    environ = os.environ if env is None else env
    policy = load_policy(path if path is not None else environ.get("CART_PROXY_CONFIG") or None)
    return settings_from_policy(policy, env=environ, overrides=overrides)


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with fields replaced (tests and the demo use this)."""
    return replace(settings, **changes)
