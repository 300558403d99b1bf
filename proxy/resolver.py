"""Short-link resolution behind an SSRF guard, with results cached for the fleet.

For a link whose host is a listed shortener (``ResolverSettings.shorteners``: the host itself or a
subdomain of it, never a substring), ``ShortLinkResolver`` follows redirects — ``HEAD`` first, and
``GET`` when a server refuses ``HEAD`` (any 4xx/5xx that is not a redirect) — for at most
``max_hops`` redirects within ``budget`` seconds, and returns where the chain ends. A redirect to a
non-HTTP scheme (an app deep link such as ``tbopen://...``) ends the chain without being fetched,
and so does a redirect to a host that cannot be reached (the URL named is the destination), and
one to a URL the caller can already judge (``known``, e.g. a page of a platform the policy
names: fetching ``item.taobao.com`` would tell nothing more and cost a round trip abroad).

The SSRF guard, checked on every hop before any connection is made:

* only ``http`` and ``https``; no user name or password in the URL; only ports 80, 443 and
  ``allow_ports``;
* every address the host resolves to must be public: private, loopback, link-local, multicast,
  reserved, unspecified, shared (100.64/10) and the IPv4-mapped forms of these are refused
  (``ipaddress``'s ``is_global`` and friends), unless inside ``allow_networks`` (empty by default;
  tests allow ``127.0.0.0/8``);
* DNS is answered by ``VettedResolver``, which returns only vetted addresses to the connector, so
  the connection goes to the address that was checked (no DNS rebinding between check and connect);
  IP literals, which aiohttp never passes to a resolver, are vetted before the request;
* no proxy from the environment, no cookies, bodies read to at most ``max_body`` bytes.

``resolve_many`` is the seam the proxy's inspection calls: ``{url: final URL or None}``, where None
means the link could not be resolved in time or was refused; what that means for the request is a
per-surface policy choice the proxy makes. Links that are not on a shortener map to themselves
without I/O. Results go through a ``DecisionCache`` (``TieredCache`` over Redis in production) under
``cache_key("resolve", url)``; failures are not cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from proxy.breaker import MonotonicClock
from proxy.cache import RESOLVE_SCOPE, DecisionCache, cache_key
from proxy.errors import CacheUnavailable, ConfigError, ResolveError, ResolveRefused

__all__ = [
    "LinkResolver",
    "Resolution",
    "ResolveMetrics",
    "ResolverSettings",
    "ShortLinkResolver",
    "VettedResolver",
    "address_refusal",
    "build_session",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_FETCHED_SCHEMES: Final = frozenset({"http", "https"})
_DEFAULT_PORTS: Final = frozenset({80, 443})


@dataclass(frozen=True, slots=True)
class ResolverSettings:
    shorteners: frozenset[str]
    """Lower-case hosts without a trailing dot; a subdomain of a listed host is a shortener too."""
    max_hops: int = 5
    budget: float = 2.0
    """Seconds for one ``resolve_many`` call, every hop and DNS lookup included."""
    max_body: int = 64 * 1024
    allow_ports: frozenset[int] = _DEFAULT_PORTS
    allow_networks: tuple[IPNetwork, ...] = ()
    """Networks exempt from the address check: empty in production."""
    cache_ttl: float = 24 * 3600.0
    concurrency: int = 16
    user_agent: str = "cart-link-proxy-resolver/1"

    @classmethod
    def build(
        cls,
        *,
        shorteners: Iterable[str],
        allow_ports: Iterable[int] = (),
        allow_networks: Iterable[str] = (),
        option: str = "links.shorteners",
        **options: Any,
    ) -> ResolverSettings:
        """Validate plain values (from the policy or settings); ``ConfigError`` names the option.

        >>> ResolverSettings.build(shorteners=["T.CN."], allow_networks=["127.0.0.0/8"]).shorteners
        frozenset({'t.cn'})
        """
        hosts = frozenset(h.strip().lower().rstrip(".") for h in shorteners if h.strip())
        ports = set(_DEFAULT_PORTS)
        for port in allow_ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigError(f"{option}: allow_ports: {port!r} is not a port number")
            ports.add(port)
        networks = []
        for text in allow_networks:
            try:
                networks.append(ipaddress.ip_network(text))
            except ValueError as exc:
                raise ConfigError(f"{option}: allow_networks: {exc}") from None
        settings = cls(
            shorteners=hosts, allow_ports=frozenset(ports), allow_networks=tuple(networks),
            **options,
        )
        if not 1 <= settings.max_hops <= 10:
            raise ConfigError(f"{option}: max_hops must be 1..10, got {settings.max_hops}")
        if not 0 < settings.budget <= 30:
            raise ConfigError(f"{option}: budget must be in (0, 30] s, got {settings.budget}")
        return settings

    def is_shortener(self, host: str | None) -> bool:
        if not host:
            return False
        host = host.lower().rstrip(".")
        while True:
            if host in self.shorteners:
                return True
            _, dot, host = host.partition(".")
            if not dot:
                return False


@dataclass(frozen=True, slots=True)
class Resolution:
    url: str
    final: str
    chain: tuple[str, ...]
    """Every URL visited, the link first and ``final`` last."""
    complete: bool = True
    """False when ``final`` is a redirect target that could not be fetched (refused connection,
    DNS failure): the best knowledge of the destination, which is then judged as it stands."""


class LinkResolver(Protocol):
    """The seam inspection resolves short links through; ``ShortLinkResolver`` implements it."""

    def handles(self, url: str) -> bool:
        """True for a link of a listed shortener host."""
        ...

    async def resolve_many(self, urls: Sequence[str]) -> Mapping[str, str | None]:
        """Where each short link leads (None: unknown); must not raise."""
        ...


class ResolveMetrics(Protocol):
    def observe_resolve(self, *, outcome: str, seconds: float) -> None: ...


def address_refusal(address: IPAddress, allow: tuple[IPNetwork, ...] = ()) -> str | None:
    """Why a connection to ``address`` is refused, or None when it is allowed.

    >>> address_refusal(ipaddress.ip_address("169.254.169.254"))
    'link-local address'
    >>> address_refusal(ipaddress.ip_address("127.0.0.1"), (ipaddress.ip_network("127.0.0.0/8"),))
    """
    if any(address in network for network in allow):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address_refusal(address.ipv4_mapped, allow)
    for attribute in ("unspecified", "loopback", "link_local", "multicast", "reserved",
                      "private"):
        if getattr(address, f"is_{attribute}"):
            return f"{attribute.replace('_', '-')} address"
    if not address.is_global:
        return "non-public address"
    return None


class _AddressRefusedError(OSError):
    """Raised inside aiohttp's connector; translated to ``ResolveRefused`` by the resolver."""


class VettedResolver(AbstractResolver):
    """DNS for the resolver's connector: only addresses that pass ``address_refusal``."""

    def __init__(self, allow: tuple[IPNetwork, ...], inner: AbstractResolver | None = None):
        self._allow = allow
        self._inner = inner if inner is not None else aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        vetted = []
        reasons = []
        for entry in found:
            reason = address_refusal(ipaddress.ip_address(entry["host"]), self._allow)
            if reason is None:
                vetted.append(entry)
            else:
                reasons.append(f"{entry['host']}: {reason}")
        if not vetted:
            detail = "; ".join(reasons)
            raise _AddressRefusedError(f"{host} resolves to no public address ({detail})")
        return vetted

    async def close(self) -> None:
        await self._inner.close()


def build_session(settings: ResolverSettings) -> aiohttp.ClientSession:
    """The resolver's own session (never the upstream's): vetted DNS, no env proxy, no cookies.

    The caller owns it and closes it in the app's cleanup context.
    """
    connector = aiohttp.TCPConnector(
        resolver=VettedResolver(settings.allow_networks),
        limit=settings.concurrency * 2,
        ttl_dns_cache=30,
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=settings.budget),
        headers={"User-Agent": settings.user_agent},
        auto_decompress=False,
    )


def _check(url: URL, settings: ResolverSettings) -> None:
    """Refuse a hop before connecting: scheme, credentials, port, IP-literal address."""
    if url.scheme not in _FETCHED_SCHEMES:
        raise ResolveRefused(f"scheme {url.scheme!r} is not http or https")
    if url.user is not None or url.password is not None:
        raise ResolveRefused("credentials in the URL")
    if not url.host:
        raise ResolveRefused("no host")
    if url.port not in settings.allow_ports:
        raise ResolveRefused(f"port {url.port} is not allowed")
    try:
        literal = ipaddress.ip_address(url.host.strip("[]"))
    except ValueError:
        return
    reason = address_refusal(literal, settings.allow_networks)
    if reason is not None:
        raise ResolveRefused(f"{url.host}: {reason}")


class ShortLinkResolver:
    """Follows a shortener's redirects; see the module docstring for the guard and the cache."""

    def __init__(
        self,
        settings: ResolverSettings,
        session: aiohttp.ClientSession | None = None,
        *,
        clock: MonotonicClock,
        cache: DecisionCache | None = None,
        metrics: ResolveMetrics | None = None,
        known: Callable[[str], bool] | None = None,
    ) -> None:
        """Without ``session``, ``start()`` builds one (``build_session``) and ``aclose()``
        closes it; a given session belongs to the caller. ``known(url)`` True ends a chain at
        ``url`` without fetching it (never the link itself)."""
        self.settings = settings
        self._session = session
        self._owns_session = session is None
        self._clock = clock
        self._cache = cache
        self._metrics = metrics
        self._known = known
        self._limit = asyncio.Semaphore(settings.concurrency)

    async def start(self) -> None:
        """Open the resolver's own session (inside the running loop, as aiohttp requires)."""
        if self._session is None:
            self._session = build_session(self.settings)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    def handles(self, url: str) -> bool:
        """Whether ``url`` is on a listed shortener (and so worth resolving)."""
        try:
            parsed = URL(url)
        except ValueError:
            return False
        return parsed.scheme in _FETCHED_SCHEMES and self.settings.is_shortener(parsed.host)

    async def resolve_many(self, urls: Iterable[str]) -> Mapping[str, str | None]:
        """``{url: final URL, or None when unresolved}``; never raises, returns within budget."""
        result: dict[str, str | None] = {}
        short = []
        for url in dict.fromkeys(urls):
            if self.handles(url):
                short.append(url)
            else:
                result[url] = url
        if not short:
            return result
        keys = {url: cache_key(RESOLVE_SCOPE, url) for url in short}
        cached: dict[str, bytes] = {}
        if self._cache is not None:
            try:
                cached = await self._cache.get_many(list(keys.values()))
            except CacheUnavailable:
                cached = {}
        pending = []
        for url in short:
            hit = cached.get(keys[url])
            if hit is not None:
                result[url] = hit.decode("utf-8", "replace")
                self._observe("cached", 0.0)
            else:
                pending.append(url)
        if not pending:
            return result
        deadline = asyncio.get_running_loop().time() + self.settings.budget
        finals = await asyncio.gather(*(self._resolve_by(url, deadline) for url in pending))
        fresh = {}
        for url, final in zip(pending, finals, strict=True):
            result[url] = final
            if final is not None:
                fresh[keys[url]] = final.encode()
        if fresh and self._cache is not None:
            # A failed write is counted by the guard; the next request resolves again.
            with contextlib.suppress(CacheUnavailable):
                await self._cache.set_many(fresh, self.settings.cache_ttl)
        return result

    async def _resolve_by(self, url: str, deadline: float) -> str | None:
        started = self._clock()
        outcome = "error"
        try:
            async with asyncio.timeout_at(deadline), self._limit:
                resolution = await self._follow(url)
            outcome = "resolved"
            return resolution.final
        except ResolveRefused:
            outcome = "refused"
            return None
        except ResolveError:
            return None
        except TimeoutError:
            outcome = "timeout"
            return None
        finally:
            self._observe(outcome, self._clock() - started)

    async def resolve(self, url: str) -> Resolution:
        """Follow ``url`` within the budget; raises ``ResolveRefused`` or ``ResolveError``."""
        try:
            async with asyncio.timeout(self.settings.budget):
                return await self._follow(url)
        except TimeoutError as exc:
            raise ResolveError(f"{url}: not resolved within {self.settings.budget} s") from exc

    async def _follow(self, url: str) -> Resolution:
        try:
            current = URL(url)
        except ValueError as exc:
            raise ResolveError(f"not a URL: {exc}") from exc
        chain = [str(current)]
        seen = {str(current)}
        for _ in range(self.settings.max_hops + 1):
            if len(chain) > 1 and (
                current.scheme not in _FETCHED_SCHEMES
                or (self._known is not None and self._known(str(current)))
            ):
                return Resolution(url, str(current), tuple(chain))
            _check(current, self.settings)
            try:
                location = await self._hop(current)
            except ResolveRefused:
                raise
            except ResolveError:
                if len(chain) == 1:
                    raise
                # The shortener answered and named a destination that cannot be reached:
                # that destination is what the link leads to.
                return Resolution(url, str(current), tuple(chain), complete=False)
            if location is None:
                return Resolution(url, str(current), tuple(chain))
            try:
                current = current.join(URL(location))
            except ValueError as exc:
                raise ResolveError(f"bad Location {location!r}: {exc}") from exc
            if str(current) in seen:
                raise ResolveError(f"redirect loop at {current}")
            seen.add(str(current))
            chain.append(str(current))
        raise ResolveError(f"more than {self.settings.max_hops} redirects from {url}")

    async def _hop(self, url: URL) -> str | None:
        """One request: the ``Location`` of a redirect, or None when the chain ends here."""
        status, location = await self._request("HEAD", url)
        if status not in _REDIRECTS and status >= 400:
            status, location = await self._request("GET", url)
        if status in _REDIRECTS and location:
            return location
        return None

    async def _request(self, method: str, url: URL) -> tuple[int, str | None]:
        if self._session is None:
            raise ResolveError("the resolver is not started")
        try:
            async with self._session.request(method, url, allow_redirects=False) as response:
                if method == "GET":
                    # Bounded: enough to drain a small page; a bigger one closes the connection.
                    await response.content.read(self.settings.max_body)
                    if not response.content.at_eof():
                        response.close()
                return response.status, response.headers.get("Location")
        except TimeoutError:
            raise  # the budget, not the server, decides (aiohttp's timeouts are ClientErrors too)
        except aiohttp.ClientConnectorDNSError as exc:
            if isinstance(exc.os_error, _AddressRefusedError):
                raise ResolveRefused(str(exc.os_error)) from exc
            raise ResolveError(f"{url.host}: DNS failed: {exc.os_error}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ResolveError(f"{method} {url.host}: {type(exc).__name__}: {exc}") from exc

    def _observe(self, outcome: str, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.observe_resolve(outcome=outcome, seconds=seconds)
