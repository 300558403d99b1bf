"""proxy.admin: bearer auth (nothing changes without it), flag changes, explain."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from proxy.admin import create_admin_app
from proxy.flags import AUDIT_KEY, RedisFlagStore
from proxy.policyfile import build_engine, load_policy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.fixtures_redis import RedisServer


TOKEN = "s3cret-admin-token"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def engine_and_policy():
    policy = load_policy()
    return build_engine(policy), policy


@pytest.fixture
async def admin(aiohttp_client, redis_server: RedisServer, engine_and_policy) -> AsyncIterator:
    engine, policy = engine_and_policy
    client = Redis.from_url(redis_server.url)
    store = RedisFlagStore.for_policy(client, policy, clock=lambda: NOW)
    app = create_admin_app(flags=store, engine=engine, token=TOKEN, clock=lambda: NOW)
    http = await aiohttp_client(app)
    http.store = store
    http.redis = client
    yield http
    await client.aclose()


AUTH = {"Authorization": f"Bearer {TOKEN}"}

CHANGES = [
    ("GET", "/flags", None),
    ("PUT", "/flags/rollout", {"surface": "livestream_cart", "mode": "shadow", "percent": 5}),
    ("POST", "/flags/allow", {"sellers": ["s1"]}),
    ("POST", "/flags/force", {"sellers": ["s2"]}),
    ("POST", "/flags/unlist", {"sellers": ["s1"]}),
    ("PUT", "/flags/kill", {"on": True}),
    ("POST", "/explain", {"text": "https://item.taobao.com/item.htm?id=1",
                          "surface": "livestream_cart"}),
]


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": "Bearer"},
], ids=["missing", "wrong", "basic-scheme", "longer", "empty"])
@pytest.mark.parametrize(("method", "path", "body"), CHANGES, ids=[c[1] + c[0] for c in CHANGES])
async def test_without_the_token_401_and_nothing_changes(admin, headers, method, path, body):
    response = await admin.request(method, path, json=body, headers=headers)
    assert response.status == 401
    assert response.content_type == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    problem = await response.json()
    assert problem["status"] == 401
    assert problem["type"].endswith("unauthorized")
    assert await admin.redis.dbsize() == 0  # no flag, no audit record, no revision


async def test_show_flags(admin):
    response = await admin.get("/flags", headers=AUTH)
    assert response.status == 200
    document = await response.json()
    assert document["flags"]["kill_switch"] is False
    assert document["audit"] == []


async def test_changes_with_the_token_are_applied_and_audited(admin):
    headers = {**AUTH, "X-Actor": "alice"}
    response = await admin.put("/flags/rollout", headers=headers, json={
        "surface": "livestream_cart", "rule": "taobao-cutoff-2022", "mode": "enforce",
        "percent": 10})
    assert response.status == 200
    document = await response.json()
    assert {"surface": "livestream_cart", "rule": "taobao-cutoff-2022", "mode": "enforce",
            "percent": 10} in document["flags"]["flags"]
    response = await admin.post("/flags/force", headers=headers, json={"sellers": ["vip"]})
    assert (await response.json())["flags"]["force_sellers"] == ["vip"]
    response = await admin.put("/flags/kill", headers=AUTH, json={"on": True, "actor": "bob"})
    assert (await response.json())["flags"]["kill_switch"] is True
    audit = (await (await admin.get("/flags", headers=AUTH)).json())["audit"]
    assert [(e["actor"], e["action"]) for e in audit] == [
        ("bob", "kill"), ("alice", "force"), ("alice", "set")]
    assert audit[0]["at"] == NOW.isoformat()


@pytest.mark.parametrize(("method", "path", "body", "slug"), [
    ("PUT", "/flags/rollout", {"surface": "livestream_cart", "mode": "loud", "percent": 1},
     "invalid-flag-change"),
    ("PUT", "/flags/rollout", {"surface": "nowhere", "mode": "off", "percent": 1},
     "invalid-flag-change"),
    ("PUT", "/flags/rollout", {"surface": "livestream_cart"}, "invalid-flag-change"),
    ("POST", "/flags/allow", {"sellers": "s1"}, "invalid-flag-change"),
    ("PUT", "/flags/kill", {"on": "yes"}, "invalid-flag-change"),
    ("POST", "/explain", {"text": 1}, "malformed-json"),
], ids=["mode", "surface", "missing", "sellers-type", "kill-type", "explain-type"])
async def test_bad_changes_are_400_and_change_nothing(admin, method, path, body, slug):
    response = await admin.request(method, path, json=body, headers=AUTH)
    assert response.status == 400
    assert (await response.json())["type"].endswith(slug)
    assert await admin.redis.xlen(AUDIT_KEY) == 0


async def test_malformed_json_body(admin):
    response = await admin.put("/flags/kill", data=b"{not json", headers=AUTH)
    assert response.status == 400


async def test_explain_returns_the_engine_decision(admin):
    response = await admin.post("/explain", headers=AUTH, json={
        "text": "买这个 https://item.taobao.com/item.htm?id=1", "surface": "livestream_cart",
        "at": "2022-03-02T00:00:00+08:00", "seller": "s1"})
    assert response.status == 200
    record = await response.json()
    assert record["action"] == "block"
    assert record["rule"] == "taobao-cutoff-2022"
    assert record["links"][0]["platform"] == "taobao"
    assert record["rollout"] == {"kill_switch": False,
                                 "modes": {"taobao-cutoff-2022": "enforce"}}
    before = await admin.post("/explain", headers=AUTH, json={
        "text": "https://item.taobao.com/item.htm?id=1", "surface": "livestream_cart",
        "at": "2022-02-28T00:00:00+08:00"})
    assert (await before.json())["action"] == "allow"


async def test_explain_needs_an_aware_instant(admin):
    response = await admin.post("/explain", headers=AUTH, json={
        "text": "x", "surface": "livestream_cart", "at": "2022-03-02T00:00:00"})
    assert response.status == 400


def test_the_api_is_off_without_a_token(engine_and_policy):
    with pytest.raises(ValueError, match="non-empty bearer token"):
        create_admin_app(flags=None, engine=engine_and_policy[0], token="",  # type: ignore[arg-type]
                         clock=lambda: NOW)


@pytest.fixture
async def read_only(aiohttp_client, engine_and_policy):
    from proxy.flags import StaticFlags

    engine, policy = engine_and_policy
    app = create_admin_app(flags=StaticFlags(policy), engine=engine, token=TOKEN,
                           clock=lambda: NOW)
    return await aiohttp_client(app)


async def test_without_redis_flags_are_read_only(read_only):
    response = await read_only.get("/flags", headers=AUTH)
    assert response.status == 200
    document = await response.json()
    assert (document["source"], document["revision"], document["audit"]) == ("policy", None, [])
    for method, path, body in CHANGES[1:-1]:
        response = await read_only.request(method, path, json=body, headers=AUTH)
        assert response.status == 503, path
        assert response.content_type == "application/problem+json"
        assert (await response.json())["type"].endswith("flag-store-unavailable")
    response = await read_only.post("/explain", headers=AUTH, json=CHANGES[-1][2])
    assert response.status == 200


async def test_without_redis_the_token_is_still_required(read_only):
    response = await read_only.get("/flags")
    assert response.status == 401


async def test_redis_store_reports_its_source(admin):
    document = await (await admin.get("/flags", headers=AUTH)).json()
    assert document["source"] == "redis"
