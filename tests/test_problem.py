from __future__ import annotations

import logging

import orjson
import pytest

from proxy.errors import BodyTooLarge, PolicyBlocked
from proxy.problem import CONTENT_TYPE, TYPE_BASE, render, render_unexpected


def test_render_client_facing_error() -> None:
    response = render(BodyTooLarge("too big", extensions={"limit": 10}), instance="/x",
                      request_id="r1")
    assert response.status == 413
    assert response.content_type == CONTENT_TYPE
    assert response.headers["X-Request-Id"] == "r1"
    assert isinstance(response.body, bytes)
    assert orjson.loads(response.body) == {
        "type": TYPE_BASE + "body-too-large", "title": "Body too large", "status": 413,
        "detail": "too big", "instance": "/x", "request_id": "r1", "limit": 10,
    }


def test_extensions_cannot_override_members() -> None:
    response = render(PolicyBlocked("no", extensions={"status": 200, "links": []}))
    assert isinstance(response.body, bytes)
    body = orjson.loads(response.body)
    assert body["status"] == 422
    assert body["links"] == []


def test_unexpected_is_logged_with_request_id(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        response = render_unexpected(RuntimeError("secret detail"), instance="/y",
                                     request_id="r2")
    assert response.status == 500
    assert isinstance(response.body, bytes)
    assert b"secret detail" not in response.body
    assert b"r2" in response.body
    assert caplog.records[0].exc_info is not None
