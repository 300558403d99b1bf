"""The bundled demo cart service: the reference cart API, in memory.

``create_demo_app()`` serves the routes of the shipped policy (live carts, short-video carts,
product pages) from dictionaries, seeded with a live room ``r1`` whose cart still holds a Taobao
link published before the cutoff, so the proxy's response rewriting shows at once. It performs
no policy checks itself: that is the proxy's job. Used by ``cart-link-proxy demo`` and tests.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

__all__ = ["DEMO_STORE", "SEED", "create_demo_app"]

Store = dict[str, dict[str, Any]]
SEED: dict[str, Any] = {
    "live": {"r1": [{"item_id": "seed-1", "title": "开播前上架的淘宝商品",
                     "url": "https://item.taobao.com/item.htm?id=520000001"},
                    {"item_id": "seed-2", "title": "快手小店自营",
                     "url": "https://app.kwaixiaodian.com/merchant/shop/detail?id=8"}]},
    "videos": {},
    "products": {"p1": {"product_id": "p1", "seller_id": "s1", "title": "示例商品",
                        "detail_url": "https://detail.tmall.com/item.htm?id=1",
                        "description": "以前发布的天猫链接"}},
}
DEMO_STORE = web.AppKey("demo_store", dict)


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


def _carts(request: web.Request) -> tuple[dict[str, list[dict[str, Any]]], str]:
    kind = "live" if request.path.startswith("/v1/live/") else "videos"
    key = request.match_info.get("room_id") or request.match_info["video_id"]
    return request.app[DEMO_STORE][kind], key


async def add_items(request: web.Request) -> web.Response:
    body = await _json(request)
    carts, key = _carts(request)
    items = [i for i in body.get("items", []) if isinstance(i, dict)]
    carts.setdefault(key, []).extend(items)
    return web.json_response({"added": len(items), "items": carts[key]}, status=201)


async def update_item(request: web.Request) -> web.Response:
    body = await _json(request)
    carts, key = _carts(request)
    item = {**body, "item_id": request.match_info["item_id"]}
    cart = [i for i in carts.setdefault(key, []) if i.get("item_id") != item["item_id"]]
    carts[key] = [*cart, item]
    return web.json_response(item)


async def read_cart(request: web.Request) -> web.Response:
    carts, key = _carts(request)
    field = "room_id" if request.path.startswith("/v1/live/") else "video_id"
    return web.json_response({field: key, "items": carts.get(key, [])})


async def put_product(request: web.Request) -> web.Response:
    body = await _json(request)
    product_id = request.match_info["product_id"]
    product = {**body, "product_id": product_id}
    request.app[DEMO_STORE]["products"][product_id] = product
    return web.json_response(product)


async def get_product(request: web.Request) -> web.Response:
    product = request.app[DEMO_STORE]["products"].get(request.match_info["product_id"])
    if product is None:
        raise web.HTTPNotFound(text="no such product")
    return web.json_response(product)


async def index(request: web.Request) -> web.Response:
    return web.json_response({"service": "cart-link-proxy demo cart"})


def create_demo_app(seed: dict[str, Any] | None = None) -> web.Application:
    app = web.Application()
    app[DEMO_STORE] = copy.deepcopy(SEED if seed is None else seed)
    app.router.add_get("/", index)
    app.router.add_post("/v1/live/{room_id}/cart/items", add_items)
    app.router.add_put("/v1/live/{room_id}/cart/items/{item_id}", update_item)
    app.router.add_get("/v1/live/{room_id}/cart", read_cart)
    app.router.add_post("/v1/videos/{video_id}/cart/items", add_items)
    app.router.add_get("/v1/videos/{video_id}/cart", read_cart)
    app.router.add_put("/v1/products/{product_id}", put_product)
    app.router.add_get("/v1/products/{product_id}", get_product)
    return app
