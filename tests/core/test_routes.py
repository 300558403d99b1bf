from __future__ import annotations

import pytest

from proxy.core.policy import Policy
from proxy.core.routes import RouteTable

CASES = [
    ("POST", "/v1/live/r1/cart/items", "live-cart-add", {"room_id": "r1"}),
    ("post", "/v1/live/r1/cart/items", "live-cart-add", {"room_id": "r1"}),
    ("PUT", "/v1/live/r1/cart/items/i9", "live-cart-update", {"room_id": "r1", "item_id": "i9"}),
    ("GET", "/v1/live/r1/cart", "live-cart-read", {"room_id": "r1"}),
    ("POST", "/v1/videos/v7/cart/items", "video-cart-add", {"video_id": "v7"}),
    ("GET", "/v1/videos/v7/cart", "video-cart-read", {"video_id": "v7"}),
    ("PUT", "/v1/products/p1", "product-update", {"product_id": "p1"}),
    ("GET", "/v1/products/p1", "product-read", {"product_id": "p1"}),
    ("GET", "/v1/live/r1/cart/items", None, None),
    ("DELETE", "/v1/products/p1", None, None),
    ("POST", "/v1/live//cart/items", None, None),
    ("POST", "/v1/live/r1/cart/items/", None, None),
    ("GET", "/", None, None),
    ("GET", "/v1/products/p1/extra", None, None),
]


@pytest.mark.parametrize(("method", "path", "route", "params"), CASES,
                         ids=[f"{m} {p}" for m, p, _, _ in CASES])
def test_match(policy: Policy, method: str, path: str, route: str | None,
               params: dict[str, str] | None) -> None:
    match = RouteTable(policy.routes).match(method, path)
    if route is None:
        assert match is None
    else:
        assert match is not None
        assert (match.route.id, dict(match.params)) == (route, params)


def test_memoised_answers_are_the_same_and_the_memo_is_bounded(policy: Policy) -> None:
    table = RouteTable(policy.routes)
    first = table.match("POST", "/v1/live/r1/cart/items")
    assert table.match("POST", "/v1/live/r1/cart/items") is first
    assert table.match("GET", "/elsewhere") is None
    assert table.match("GET", "/elsewhere") is None
    for i in range(5000):  # client-chosen paths cannot grow the memo without bound
        table.match("GET", f"/unrouted/{i}")
    assert len(table._seen) <= 4096
    match = table.match("POST", "/v1/live/r2/cart/items")
    assert match is not None
    assert dict(match.params) == {"room_id": "r2"}
