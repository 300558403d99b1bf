from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from proxy.config import MIB, NonJSON, load_settings, settings_from_policy
from proxy.core.policy import Policy
from proxy.errors import ConfigError


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
