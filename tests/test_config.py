from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from proxy.config import MIB, NonJSON, load_settings, settings_from_policy
from proxy.core.policy import Policy
from proxy.errors import ConfigError
from proxy.redisconn import Topology


def test_defaults_and_policy_section(policy: Policy) -> None:
    settings = settings_from_policy(policy, env={})
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.upstream == URL("http://127.0.0.1:8081")
    assert settings.limits.max_body_bytes == MIB
    assert settings.limits.max_json_depth == 64
    assert settings.limits.non_json is NonJSON.REJECT
    assert settings.metrics_port == 9108
    assert settings.workers == 1


def test_precedence_file_env_flags(policy: Policy) -> None:
    custom = replace(policy, runtime={"listen": {"port": 9000}, "upstream": "http://a:1",
                                      "limits": {"max_body_bytes": "2MiB", "non_json": "pass"}})
    settings = settings_from_policy(custom, env={"CART_PROXY_PORT": "9001",
                                                 "CART_PROXY_UPSTREAM": "http://b:2/"})
    assert settings.port == 9001
    assert settings.upstream == URL("http://b:2")
    assert settings.limits.max_body_bytes == 2 * MIB
    assert settings.limits.non_json is NonJSON.PASS
    settings = settings_from_policy(custom, env={"CART_PROXY_PORT": "9001"},
                                    overrides={"port": 9002, "host": None})
    assert settings.port == 9002


BAD = [
    ({"listen": {"port": 70000}}, {}, "proxy.listen.port"),
    ({"upstream": "ftp://x"}, {}, "proxy.upstream"),
    ({"upstream": "http://x/path"}, {}, "proxy.upstream"),
    ({"limits": {"max_json_depth": 254}}, {}, "proxy.limits.max_json_depth"),
    ({"limits": {"non_json": "maybe"}}, {}, "proxy.limits.non_json"),
    ({"limits": {"max_body_bytes": "lots"}}, {}, "proxy.limits.max_body_bytes"),
    ({"timeouts": {"read": -1}}, {}, "proxy.timeouts.read"),
    ({"colour": "blue"}, {}, "proxy.colour: unknown key"),
    ({}, {"CART_PROXY_WORKERS": "0"}, "env CART_PROXY_WORKERS"),
    ({}, {"CART_PROXY_PORT": "http"}, "env CART_PROXY_PORT"),
]


@pytest.mark.parametrize(("runtime", "env", "message"), BAD, ids=[m for _, _, m in BAD])
def test_errors_name_the_origin(policy: Policy, runtime: dict[str, Any], env: dict[str, str],
                                message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_policy(replace(policy, runtime=runtime), env=env)
    assert message in str(caught.value)
    if not env:
        assert policy.source in str(caught.value)


def test_flag_errors_name_the_flag(policy: Policy) -> None:
    with pytest.raises(ConfigError, match="--metrics-port"):
        settings_from_policy(policy, env={}, overrides={"metrics_port": -1})


def test_load_settings_reads_the_file_and_env(tmp_path: Path) -> None:
    text = Path("config/policy.yaml").read_text(encoding="utf-8")
    path = tmp_path / "p.yaml"
    path.write_text(text.replace("port: 8080", "port: 8181"), encoding="utf-8")
    assert load_settings(path, env={}).port == 8181
    assert load_settings(None, env={"CART_PROXY_CONFIG": str(path)}).port == 8181
    assert load_settings(path, env={"CART_PROXY_PORT": "8282"}).port == 8282


# --- Redis, admin API, resolver ----------------------------------------------------------------

TOKEN = "0123456789abcdef-token"


def test_redis_admin_and_resolver_defaults(policy: Policy) -> None:
    settings = settings_from_policy(policy, env={})
    assert settings.redis is None
    assert (settings.admin_port, settings.admin_token) == (0, None)
    assert settings.resolver is not None
    assert settings.resolver.shorteners == policy.shorteners
    assert settings.resolver.allow_ports == {80, 443}
    assert settings.resolver.allow_networks == ()
    assert (settings.resolver.budget, settings.resolver.max_hops) == (2.0, 5)


def test_redis_url_and_resolver_from_env(policy: Policy) -> None:
    settings = settings_from_policy(policy, env={
        "REDIS_URL": "redis+sentinel://s1:26379,s2/cart-cache/1",
        "CART_PROXY_RESOLVER_ALLOW_PORTS": "8080, 9000",
        "CART_PROXY_RESOLVER_ALLOW_NETS": "127.0.0.0/8,::1/128",
        "CART_PROXY_RESOLVER_BUDGET": "0.5",
        "CART_PROXY_RESOLVER_MAX_HOPS": "3",
    })
    assert settings.redis is not None
    assert settings.redis.topology is Topology.SENTINEL
    assert settings.redis.nodes == (("s1", 26379), ("s2", 26379))
    assert settings.resolver is not None
    assert settings.resolver.allow_ports == {80, 443, 8080, 9000}
    assert [str(n) for n in settings.resolver.allow_networks] == ["127.0.0.0/8", "::1/128"]
    assert (settings.resolver.budget, settings.resolver.max_hops) == (0.5, 3)


def test_resolver_and_admin_from_the_file_with_env_and_flag_overrides(policy: Policy) -> None:
    custom = replace(policy, runtime={"admin": {"port": 9200},
                                      "resolver": {"allow_ports": [8000], "cache_ttl": 60},
                                      "cache": {"local_size": 50, "local_ttl": 5}})
    settings = settings_from_policy(custom, env={"CART_PROXY_ADMIN_TOKEN": TOKEN})
    assert settings.admin_port == 9200
    assert settings.admin_token == TOKEN
    assert settings.resolver is not None
    assert settings.resolver.allow_ports == {80, 443, 8000}
    assert settings.resolver.cache_ttl == 60
    assert (settings.cache_local_size, settings.cache_local_ttl) == (50, 5)
    env = {"CART_PROXY_ADMIN_TOKEN": TOKEN, "CART_PROXY_ADMIN_PORT": "9300"}
    assert settings_from_policy(custom, env=env).admin_port == 9300
    assert settings_from_policy(custom, env=env, overrides={"admin_port": 9400}).admin_port == 9400
    assert settings_from_policy(custom, env=env, overrides={"admin_port": 0}).admin_port == 0


def test_secrets_stay_out_of_repr(policy: Policy) -> None:
    settings = settings_from_policy(policy, env={
        "CART_PROXY_ADMIN_TOKEN": TOKEN, "CART_PROXY_ADMIN_PORT": "9200",
        "REDIS_URL": "redis://user:hunter2-password@redis:6379/0"})
    text = repr(settings)
    assert TOKEN not in text
    assert "hunter2" not in text


SECURITY = [
    ({"admin": {"token": TOKEN}}, {}, "proxy.admin.token: the admin token is never read"),
    ({"admin": {"port": 9200}}, {}, "the admin API needs a bearer token"),
    ({}, {"CART_PROXY_ADMIN_PORT": "9200"}, "env CART_PROXY_ADMIN_PORT: the admin API needs"),
    ({}, {"CART_PROXY_ADMIN_TOKEN": "short"}, "env CART_PROXY_ADMIN_TOKEN: too short"),
    ({"admin": {"port": 9108}}, {"CART_PROXY_ADMIN_TOKEN": TOKEN},
     "collides with the metrics ports 9108..9108"),
    ({"admin": {"port": 9109}, "workers": 2}, {"CART_PROXY_ADMIN_TOKEN": TOKEN},
     "collides with the metrics ports 9108..9109"),
    ({"admin": {"port": 8080}}, {"CART_PROXY_ADMIN_TOKEN": TOKEN}, "is the proxy port"),
    ({}, {"REDIS_URL": "memcached://x"}, "env REDIS_URL: unsupported scheme"),
    ({}, {"REDIS_URL": "redis://host:notaport/0"}, "env REDIS_URL: not a valid URL"),
    ({}, {"REDIS_URL": "redis+cluster://a:7000/3"}, "env REDIS_URL: a cluster has no databases"),
    ({"resolver": {"allow_networks": ["10.0.0.0/33"]}}, {}, "proxy.resolver.allow_networks"),
    ({"resolver": {"allow_ports": [0]}}, {}, "proxy.resolver.allow_ports"),
    ({}, {"CART_PROXY_RESOLVER_BUDGET": "31"}, "env CART_PROXY_RESOLVER_BUDGET"),
    ({"resolver": {"max_hops": 11}}, {}, "proxy.resolver.max_hops"),
    ({"resolver": {"hops": 1}}, {}, "proxy.resolver.hops: unknown key"),
]


@pytest.mark.parametrize(("runtime", "env", "message"), SECURITY,
                         ids=[m.split(":")[0] + "-" + str(i) for i, (_, _, m) in
                              enumerate(SECURITY)])
def test_redis_admin_and_resolver_errors(policy: Policy, runtime: dict[str, Any],
                                         env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_policy(replace(policy, runtime=runtime), env=env)
    assert message in str(caught.value)


def test_admin_port_outside_the_metrics_range_is_fine(policy: Policy) -> None:
    custom = replace(policy, runtime={"admin": {"port": 9110}, "workers": 2})
    settings = settings_from_policy(custom, env={"CART_PROXY_ADMIN_TOKEN": TOKEN})
    assert (settings.admin_port, settings.workers, settings.metrics_port) == (9110, 2, 9108)
    custom = replace(policy, runtime={"admin": {"port": 9109}, "metrics_port": 0, "workers": 2})
    assert settings_from_policy(custom, env={"CART_PROXY_ADMIN_TOKEN": TOKEN}).admin_port == 9109
