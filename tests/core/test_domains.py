"""DomainIndex over the real offline suffix list: registrable-domain matching, never substrings."""

from __future__ import annotations

import pytest

from proxy.core.domains import DomainIndex
from proxy.core.policy import Policy
from proxy.policyfile import load_policy, suffix_splitter


@pytest.fixture(scope="module")
def index() -> DomainIndex:
    policy: Policy = load_policy()
    return DomainIndex.for_platforms(suffix_splitter(), policy.platforms)


CASES = [
    ("item.taobao.com", "taobao", "taobao.com"),
    ("taobao.com", "taobao", "taobao.com"),
    ("a.b.c.tmall.com", "taobao", "tmall.com"),
    ("detail.tmall.hk", "taobao", "tmall.hk"),
    ("m.tb.cn", "taobao", "tb.cn"),
    ("shop.taobao", "taobao", "taobao"),
    ("x.y.tmall", "taobao", "tmall"),
    ("3.cn", "jd", "3.cn"),
    ("item.jd.com", "jd", "jd.com"),
    ("npcitem.jd.hk", "jd", "jd.hk"),
    ("v.kuaishou.com", "own", "kuaishou.com"),
    ("app.kwaixiaodian.com", "own", "kwaixiaodian.com"),
    ("taobao.com.example.net", None, ""),
    ("faketaobao.com", None, ""),
    ("www.jdsports.co.uk", None, ""),
    ("img.alicdn.com", None, ""),
    ("img14.360buyimg.com", None, ""),
    ("jd.com.cn", None, ""),
    ("127.0.0.1", None, ""),
    ("localhost", None, ""),
    ("", None, ""),
]


@pytest.mark.parametrize(("host", "platform", "matched"), CASES, ids=[c[0] or "empty" for c in CASES])
def test_lookup(index: DomainIndex, host: str, platform: str | None, matched: str) -> None:
    found = index.lookup(host)
    assert found.platform == platform
    assert found.matched == matched


def test_listed_subdomain_of_a_shared_registrable_domain() -> None:
    index = DomainIndex(suffix_splitter(), {"seller.github.io": "x"})
    assert index.lookup("shop.seller.github.io").platform == "x"
    assert index.lookup("other.github.io").platform is None
