from __future__ import annotations

from datetime import datetime, timedelta, timezone

from multidict import CIMultiDict

from proxy.core.model import Action, PendingRule, PlatformId, RuleId, SurfaceId
from proxy.headers import (
    downstream_fields,
    pending_headers,
    pointer_list,
    request_id,
    upstream_fields,
)


def test_hop_by_hop_and_connection_tokens_are_dropped() -> None:
    incoming = CIMultiDict([
        ("Connection", "keep-alive, X-A"), ("Connection", "x-b"), ("X-A", "1"), ("X-B", "2"),
        ("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"), ("Proxy-Authorization", "x"), ("Host", "shop"), ("Accept", "*/*"),
        ("X-Request-Id", "spoofed id"),
    ])
    out = CIMultiDict(upstream_fields(incoming, peer="1.2.3.4", scheme="https", host="shop",
                                      request_id="rid"))
    assert dict(out) == {"Accept": "*/*", "X-Forwarded-For": "1.2.3.4",
                         "X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop",
                         "X-Request-Id": "rid"}
    assert downstream_fields(CIMultiDict({"Connection": "close", "X-Z": "1"})) == [("X-Z", "1")]
    # The cart service's own request id: the proxy answers with its own, never with two.
    assert downstream_fields(CIMultiDict({"X-Request-Id": "theirs", "X-Z": "1"}),
                             drop=("Content-Length",)) == [("X-Z", "1")]


def test_forwarding_headers_append() -> None:
    out = CIMultiDict(upstream_fields(
        CIMultiDict([("X-Forwarded-For", "a"), ("X-Forwarded-For", "b"),
                     ("X-Forwarded-Proto", "https")]),
        peer="c", scheme="http", host=None, request_id="r", drop=["Accept"]))
    assert out["X-Forwarded-For"] == "a, b, c"
    assert out["X-Forwarded-Proto"] == "https, http"
    assert "X-Forwarded-Host" not in out


def test_request_id() -> None:
    assert request_id(CIMultiDict({"X-Request-Id": "abc.DEF-1:2"})) == "abc.DEF-1:2"
    assert request_id(CIMultiDict({"X-Request-Id": "x" * 129}), lambda: "n") == "n"
    assert len(request_id(CIMultiDict())) == 32


def test_pending_and_pointers() -> None:
    cut = datetime(2022, 3, 1, tzinfo=timezone(timedelta(hours=8)))
    rules = [PendingRule(RuleId("b"), PlatformId("jd"), SurfaceId("s"), Action.BLOCK, cut),
             PendingRule(RuleId("a"), PlatformId("tb"), SurfaceId("s"), Action.BLOCK,
                         cut + timedelta(days=1))]
    out = pending_headers(rules + rules)
    assert [name for name, _ in out] == ["Link-Policy-Pending", "Link-Policy-Pending",
                                         "Deprecation", "Sunset"]
    assert out[-1] == ("Sunset", "Mon, 28 Feb 2022 16:00:00 GMT")
    assert pending_headers([]) == []
    assert pointer_list(["/items/0", "/标题 x"]) == "#/items/0 #/%E6%A0%87%E9%A2%98%20x"


def test_generated_request_ids_are_unique_and_differ_after_fork() -> None:
    import os

    from proxy.headers import request_id

    ids = {request_id({}) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports its first id and leaves at once
        os.write(write, request_id({}).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child[:16] != request_id({})[:16]


def test_upstream_fields_keep_repeated_fields_and_merge_forwarding() -> None:
    incoming = CIMultiDict([("Accept", "*/*"), ("X-Forwarded-For", "a"), ("Connection", "x-b"),
                            ("X-B", "1"), ("X-Multi", "1"), ("X-Multi", "2")])
    fields = upstream_fields(incoming, peer="p", scheme="https", host="h", request_id="r")
    assert ("X-Forwarded-For", "a, p") in fields
    assert [v for n, v in fields if n == "X-Multi"] == ["1", "2"]
    assert not any(n == "X-B" for n, _ in fields)

