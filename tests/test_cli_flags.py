"""``cart-link-proxy flags ...``: the real console script against a real Redis."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.fixtures_redis import RedisServer


CLI = shutil.which("cart-link-proxy")


def flags(*args: str, url: str | None = None, env_url: str | None = None,
          actor: str | None = "rm") -> subprocess.CompletedProcess[str]:
    command = [CLI] if CLI else [sys.executable, "-m", "proxy"]
    extra = [*(["--redis-url", url] if url else []), *(["--actor", actor] if actor else [])]
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    if env_url:
        env["REDIS_URL"] = env_url
    return subprocess.run([*command, "flags", *args, *extra], capture_output=True, text=True,
                          timeout=60, env=env)


def show(url: str) -> dict:
    done = flags("show", "--json", url=url)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_staged_rollout_end_to_end(redis_server: RedisServer):
    url = redis_server.url
    assert show(url)["flags"]["kill_switch"] is False
    for mode, percent in (("shadow", 100), ("enforce", 1), ("enforce", 10), ("enforce", 50),
                          ("enforce", 100)):
        done = flags("set", "--surface", "livestream_cart", "--mode", mode,
                     "--percent", str(percent), url=url)
        assert done.returncode == 0, done.stderr
        assert {"surface": "livestream_cart", "rule": None, "mode": mode,
                "percent": percent} in show(url)["flags"]["flags"]
    assert flags("kill", "on", url=url, actor="oncall").returncode == 0
    document = show(url)
    assert document["flags"]["kill_switch"] is True
    assert document["audit"][0]["actor"] == "oncall"
    assert document["audit"][0]["action"] == "kill"
    assert [e["action"] for e in document["audit"][1:6]] == ["set"] * 5
    assert flags("kill", "off", url=url).returncode == 0
    assert show(url)["flags"]["kill_switch"] is False


def test_seller_lists(redis_server: RedisServer):
    url = redis_server.url
    assert flags("allow", "s1", "s2", url=url).returncode == 0
    assert flags("force", "s3", url=url).returncode == 0
    assert flags("unlist", "s2", url=url).returncode == 0
    document = show(url)["flags"]
    assert document["allow_sellers"] == ["s1"]
    assert document["force_sellers"] == ["s3"]


def test_rule_flag_and_clear(redis_server: RedisServer):
    url = redis_server.url
    assert flags("set", "--rule", "jd-livestream-cutoff-2022", "--mode", "off", "--percent", "0",
                 url=url).returncode == 0
    assert {"surface": None, "rule": "jd-livestream-cutoff-2022", "mode": "off",
            "percent": 0} in show(url)["flags"]["flags"]
    assert flags("clear", "--rule", "jd-livestream-cutoff-2022", url=url).returncode == 0
    assert show(url)["flags"]["flags"] == []


def test_text_output_and_redis_url_from_the_environment(redis_server: RedisServer):
    flags("set", "--surface", "product_detail", "--mode", "shadow", "--percent", "0",
          env_url=redis_server.url)
    done = flags("show", env_url=redis_server.url)
    assert done.returncode == 0, done.stderr
    assert "surface=product_detail rule=*: shadow 0%" in done.stdout
    assert "kill switch  off" in done.stdout
    assert "rm set" in done.stdout


def test_actor_defaults_to_user(redis_server: RedisServer):
    command = [CLI] if CLI else [sys.executable, "-m", "proxy"]
    env = {**os.environ, "USER": "carol", "REDIS_URL": redis_server.url}
    subprocess.run([*command, "flags", "kill", "off"], check=True, env=env, timeout=60,
                   capture_output=True)
    assert show(redis_server.url)["audit"][0]["actor"] == "carol"


@pytest.mark.parametrize(("args", "message"), [
    (("set", "--surface", "nowhere", "--mode", "shadow", "--percent", "1"), "unknown surface"),
    (("set", "--surface", "livestream_cart", "--mode", "shadow", "--percent", "101"),
     "--percent must be 0..100"),
    (("set", "--surface", "livestream_cart", "--mode", "loud", "--percent", "1"),
     "invalid choice"),
    (("kill", "maybe"), "invalid choice"),
], ids=["unknown-surface", "percent", "mode", "kill-state"])
def test_usage_errors_exit_2_and_change_nothing(redis_server: RedisServer, args, message):
    done = flags(*args, url=redis_server.url)
    assert done.returncode == 2
    assert message in done.stderr
    assert show(redis_server.url)["audit"] == []


def test_no_redis_configured_exits_2():
    done = flags("show")
    assert done.returncode == 2
    assert "REDIS_URL" in done.stderr


def test_bad_redis_url_exits_2():
    done = flags("show", url="ftp://nowhere")
    assert done.returncode == 2
    assert "unsupported scheme" in done.stderr


def test_redis_down_exits_1(redis_server: RedisServer):
    redis_server.stop()
    done = flags("kill", "on", url=redis_server.url)
    assert done.returncode == 1
    assert "not saved" in done.stderr
