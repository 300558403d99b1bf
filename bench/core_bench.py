"""Decision-engine throughput: links per second, against plain tldextract on the same links.

(a) repeated realistic links (the memoised path a busy proxy lives on), target >= 1,000,000/s;
(b) all-unique inputs with nesting, free text and tokens (cold path), target >= 150,000/s.

    python -m bench.core_bench [--repeat N] [--unique N] [--processes N]

Each case runs on one core, then in ``--processes`` worker processes at once (default: one per
core), as ``serve --workers N`` runs the proxy: the machine's throughput is the sum.

Prints numbers; asserts nothing (speed is checked by reading them, not by a timed test).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from urllib.parse import quote

import tldextract

from proxy.core.model import SurfaceId
from proxy.policyfile import build_engine, load_policy

AT = datetime(2022, 3, 2, tzinfo=UTC)
SURFACE = SurfaceId("livestream_cart")

SHAPES: Sequence[Callable[[int], str]] = (
    lambda i: f"https://item.taobao.com/item.htm?id={600000000000 + i}",
    lambda i: f"https://detail.tmall.com/item.htm?id={500000000000 + i}&spm=a1z10.{i}",
    lambda i: f"https://item.jd.com/{100000000000 + i}.html",
    lambda i: f"https://app.kwaixiaodian.com/merchant/shop/detail?id={i}",
    lambda i: f"https://www.example{i % 97}.com/products/{i}",
    lambda i: f"https://m.tb.cn/h.{i:08x}",
    lambda i: f"https://r.example.com/go?url={quote(f'https://item.taobao.com/item.htm?id={i}', safe='')}",
    lambda i: f"今晚8点开抢 https://detail.tmall.com/item.htm?id={i} 拍下备注主播名",
    lambda i: f"￥Ab{i % 10}dEf{i % 7}hIj{i % 3}￥ 复制这条信息，打开手机淘宝",
    lambda i: f"新品上架 第{i}款 快手小店最便宜 item.jd.com/{i}.html",
)


def realistic(count: int, offset: int = 0) -> list[str]:
    return [SHAPES[i % len(SHAPES)](offset + i) for i in range(count)]


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:>12,.0f}/s"


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    gc.collect()
    start = time.perf_counter()
    count = fn()
    return count, time.perf_counter() - start


def _unique_in_worker(job: tuple[int, int]) -> tuple[int, float]:
    """One process's share of the all-unique case: (inputs decided, seconds)."""
    offset, count = job
    engine = build_engine(load_policy())
    texts = realistic(count, offset=offset)
    gc.collect()
    start = time.perf_counter()
    for text in texts:
        engine.decide(text, SURFACE, AT)
    return count, time.perf_counter() - start


def _repeated_in_worker(count: int) -> tuple[int, float]:
    engine = build_engine(load_policy())
    pool = realistic(1000)
    for text in pool:
        engine.decide(text, SURFACE, AT)
    start = time.perf_counter()
    for i in range(count):
        engine.decide(pool[i % 1000], SURFACE, AT)
    return count, time.perf_counter() - start


def parallel(processes: int, worker: Callable[..., tuple[int, float]], jobs: list[object]) -> str:
    """Run one job per process at once; the rate is all inputs over the slowest process's time."""
    with multiprocessing.get_context("fork").Pool(processes) as workers:
        results = workers.map(worker, jobs)
    total = sum(count for count, _ in results)
    return rate(total, max(seconds for _, seconds in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2_000_000)
    parser.add_argument("--unique", type=int, default=200_000)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    policy = load_policy()
    extractor = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    extractor.extract_str("warm.example.com")

    pool = realistic(1000)
    engine = build_engine(policy)
    for text in pool:
        engine.decide(text, SURFACE, AT)

    def repeated() -> int:
        decide = engine.decide
        for i in range(args.repeat):
            decide(pool[i % 1000], SURFACE, AT)
        return args.repeat

    def repeated_tldextract() -> int:
        extract = extractor.extract_str
        for i in range(args.repeat // 10):
            extract(pool[i % 1000])
        return args.repeat // 10

    unique = realistic(args.unique, offset=10_000_000)
    cold = build_engine(policy, memo_size=65536)

    def all_unique() -> int:
        decide = cold.decide
        for text in unique:
            decide(text, SURFACE, AT)
        return len(unique)

    def unique_tldextract() -> int:
        extract = extractor.extract_str
        for text in unique:
            extract(text)
        return len(unique)

    links = sum(len(engine.links(t)) for t in pool)
    print(f"inputs: {len(pool)} realistic shapes x {len(SHAPES)}; {links} links in the pool")
    print(f"{'case':52} {'engine':>14} {'tldextract':>14} {'ratio':>7}")
    for name, mine, theirs in (
        ("(a) repeated realistic links (target >= 1,000,000/s)", repeated, repeated_tldextract),
        ("(b) all unique, nesting + text + tokens (>= 150,000/s)", all_unique, unique_tldextract),
    ):
        n1, s1 = timed(mine)
        n2, s2 = timed(theirs)
        print(f"{name:52} {rate(n1, s1):>14} {rate(n2, s2):>14} {(n1 / s1) / (n2 / s2):>6.1f}x")
    n = args.processes
    print(f"\nwith {n} worker processes at once (as serve --workers {n}):")
    share = args.unique // n
    print(f"{'(a) repeated realistic links':52} "
          f"{parallel(n, _repeated_in_worker, [args.repeat // n] * n):>14}")
    print(f"{'(b) all unique, nesting + text + tokens':52} "
          f"{parallel(n, _unique_in_worker, [(20_000_000 + i * share, share) for i in range(n)]):>14}")


if __name__ == "__main__":
    main()
