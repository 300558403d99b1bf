from __future__ import annotations

from typing import Any

from proxy.demo import create_demo_app


async def test_reference_api(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_demo_app())
    response = await client.post("/v1/videos/v1/cart/items",
                                 json={"seller_id": "s1", "items": [{"item_id": "a", "url": "u"}]})
    assert response.status == 201
    assert (await (await client.get("/v1/videos/v1/cart")).json()) == {
        "video_id": "v1", "items": [{"item_id": "a", "url": "u"}]}
    response = await client.put("/v1/live/r1/cart/items/seed-1", json={"title": "new"})
    assert (await response.json()) == {"title": "new", "item_id": "seed-1"}
    live = await (await client.get("/v1/live/r1/cart")).json()
    assert [i["item_id"] for i in live["items"]] == ["seed-2", "seed-1"]
    assert (await client.put("/v1/products/p9", json={"title": "p"})).status == 200
    assert (await (await client.get("/v1/products/p9")).json())["product_id"] == "p9"
    assert (await client.get("/v1/products/nope")).status == 404
    assert (await client.put("/v1/products/p9", data=b"[1]")).status == 400
