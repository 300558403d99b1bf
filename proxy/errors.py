"""The one exception tree of cart-link-proxy.

Every error the project raises on purpose is a ``ProxyError``; foreign exceptions (aiohttp, redis,
ada-url, orjson, yaml) are translated once, at the edge that calls them, with ``raise ... from exc``.
Client-facing errors carry their HTTP status, an RFC 9457 problem type slug and a title;
``proxy.problem`` is the only code that renders them. This module imports nothing from aiohttp, so the
pure core may use it.

    ProxyError
    ├── ConfigError                 a policy or settings file is wrong (exit code 2, never a response)
    ├── ClientFacingError           carries status / type slug / title
    │   ├── InputError              the client sent something we will not inspect (4xx)
    │   │   ├── MalformedJSON       400  not JSON, or JSON with duplicate keys
    │   │   ├── InvalidEncoding     400  not UTF-8, or an unknown Content-Encoding
    │   │   ├── JSONTooDeep         400  nested deeper than the configured limit
    │   │   ├── UnsupportedMediaType 415 a routed write that is not JSON
    │   │   ├── BodyTooLarge        413  over the limit, before or after decompression
    │   │   └── InvalidFlagChange   400  a flag change with a bad mode, percent, surface or rule
    │   ├── PolicyBlocked           422  a link the policy forbids on this surface
    │   ├── Unauthorized            401  admin API without the right bearer token
    │   ├── FlagStoreUnavailable    503  a flag change could not be written to Redis (admin API)
    │   └── UpstreamError           502  the cart service failed: its answer is over the inspection
    │       │                            limit or cannot be inspected (bad JSON, too deep, ...)
    │       ├── UpstreamUnavailable 502  refused, reset, DNS failure, not an HTTP/1.1 answer
    │       └── UpstreamTimeout     504  no answer within the configured timeout
    ├── BadResponse                 the upstream's answer is not HTTP/1.1 (becomes UpstreamUnavailable)
    ├── CacheUnavailable            Redis failed or the circuit is open (never reaches a client)
    └── ResolveError                a short link could not be resolved (never reaches a client)
        └── ResolveRefused          the SSRF guard refused a hop (scheme, port, user, address)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "BadResponse",
    "BodyTooLarge",
    "CacheUnavailable",
    "ClientFacingError",
    "ConfigError",
    "FlagStoreUnavailable",
    "InputError",
    "InvalidEncoding",
    "InvalidFlagChange",
    "JSONTooDeep",
    "MalformedJSON",
    "PolicyBlocked",
    "ProxyError",
    "ResolveError",
    "ResolveRefused",
    "Unauthorized",
    "UnsupportedMediaType",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class ProxyError(Exception):
    """Base of every error cart-link-proxy raises on purpose."""


class ConfigError(ProxyError):
    """A policy or settings file is invalid; the message names the file and the key path.

    ``errors`` holds every problem found, so a validator can report them all at once.
    """

    def __init__(self, errors: list[str] | str) -> None:
        self.errors: tuple[str, ...] = (errors,) if isinstance(errors, str) else tuple(errors)
        super().__init__("\n".join(self.errors))


class ClientFacingError(ProxyError):
    """An error rendered to the client as ``application/problem+json`` (RFC 9457)."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, *, extensions: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        # A copy: what the raiser does with its mapping afterwards must not change the problem.
        self.extensions: Mapping[str, Any] = dict(extensions) if extensions else {}


class InputError(ClientFacingError):
    status = 400
    slug = "bad-input"
    title = "The request body cannot be inspected"


class MalformedJSON(InputError):
    slug = "malformed-json"
    title = "Malformed JSON"


class InvalidEncoding(InputError):
    slug = "invalid-encoding"
    title = "Invalid body encoding"


class JSONTooDeep(InputError):
    slug = "json-too-deep"
    title = "JSON nested too deeply"


class UnsupportedMediaType(InputError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class BodyTooLarge(InputError):
    status = 413
    slug = "body-too-large"
    title = "Body too large"


class InvalidFlagChange(InputError):
    slug = "invalid-flag-change"
    title = "Invalid rollout flag change"


class PolicyBlocked(ClientFacingError):
    status = 422
    slug = "link-policy-violation"
    title = "Links to a forbidden platform"


class Unauthorized(ClientFacingError):
    status = 401
    slug = "unauthorized"
    title = "Missing or wrong bearer token"


class FlagStoreUnavailable(ClientFacingError):
    status = 503
    slug = "flag-store-unavailable"
    title = "The rollout flag store (Redis) is unavailable"


class UpstreamError(ClientFacingError):
    status = 502
    slug = "upstream-error"
    title = "The upstream cart service failed"


class UpstreamUnavailable(UpstreamError):
    status = 502
    slug = "upstream-unavailable"
    title = "The upstream cart service is unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    slug = "upstream-timeout"
    title = "The upstream cart service did not answer in time"


class BadResponse(ProxyError):
    """What the upstream sent is not a valid HTTP/1.1 response (``proxy.http1``); the proxy
    answers its client 502 (``UpstreamUnavailable``)."""


class CacheUnavailable(ProxyError):
    """Redis failed or its circuit is open; callers fall back to local computation."""


class ResolveError(ProxyError):
    """A short link could not be resolved (refused by the SSRF guard, too many hops, timeout)."""


class ResolveRefused(ResolveError):
    """The resolver's SSRF guard refused a hop: scheme, port, credentials or a private address."""
