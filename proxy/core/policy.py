"""The policy schema as frozen values, and ``parse_policy`` which validates a mapping into them.

The policy file is data: surfaces, platforms (domains, schemes, link-kind patterns), rules, rollout
defaults and the routes of the cart API. ``parse_policy`` collects every problem before failing and
names each one as ``<source>: <key.path>: <what is wrong>``. Reading the file is the edge's job
(``proxy.config``); this module only sees a mapping.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final, TypeVar

from proxy.core.model import (
    Action,
    Direction,
    LinkKind,
    Mode,
    PlatformId,
    RuleId,
    StripMode,
    SurfaceId,
)
from proxy.errors import ConfigError

__all__ = [
    "KindPattern",
    "Platform",
    "Policy",
    "RolloutDefaults",
    "RouteSpec",
    "Rule",
    "SellerSource",
    "Surface",
    "parse_policy",
]

SUPPORTED_FORMAT: Final = 1
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Surface:
    id: SurfaceId
    title: str
    unresolved: Action = Action.ALLOW
    """What happens to a short link that cannot be resolved in time: ``allow`` (and record it)
    or ``block``."""


@dataclass(frozen=True, slots=True)
class KindPattern:
    """One way to recognise a link kind; every condition given must hold."""

    kind: LinkKind
    hosts: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    host: re.Pattern[str] | None = None
    path: re.Pattern[str] | None = None
    query: tuple[tuple[str, re.Pattern[str] | None], ...] = ()
    """Parameter names, each with a value pattern (None: the parameter's presence is enough).
    The pattern matches when *any* listed parameter matches."""


@dataclass(frozen=True, slots=True)
class Platform:
    id: PlatformId
    title: str
    domains: frozenset[str]
    suffixes: frozenset[str]
    schemes: frozenset[str]
    app_packages: frozenset[str]
    token_words: tuple[str, ...]
    kinds: tuple[KindPattern, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    id: RuleId
    platforms: frozenset[PlatformId]
    surfaces: frozenset[SurfaceId]
    effective_from: datetime
    """Aware; the rule is in force at this instant and after it."""
    action: Action
    response_action: Action
    """What happens to links already published, when a routed response shows them."""
    kinds: frozenset[LinkKind] | None
    """None: every link to the platform."""
    target: str | None
    """Template for ``rewrite``: ``{platform}``, ``{rule}``, ``{surface}`` are filled in."""
    note: str = ""

    def action_for(self, direction: Direction) -> Action:
        return self.action if direction is Direction.REQUEST else self.response_action

    def covers(self, platform: PlatformId, surface: SurfaceId, kind: LinkKind) -> bool:
        return (
            platform in self.platforms
            and surface in self.surfaces
            and (self.kinds is None or kind in self.kinds)
        )


@dataclass(frozen=True, slots=True)
class FlagDefaults:
    mode: Mode = Mode.ENFORCE
    percent: int = 100


@dataclass(frozen=True, slots=True)
class RolloutDefaults:
    """Staged-rollout flags as written in the policy file (used when no flag store is configured)."""

    kill_switch: bool = False
    default: FlagDefaults = FlagDefaults()
    surfaces: Mapping[SurfaceId, FlagDefaults] = field(default_factory=lambda: MappingProxyType({}))
    rules: Mapping[RuleId, FlagDefaults] = field(default_factory=lambda: MappingProxyType({}))
    allow_sellers: frozenset[str] = frozenset()
    force_sellers: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class SellerSource:
    """Where the seller id of a request comes from: a header first, else a JSON pointer."""

    header: str | None = "X-Seller-Id"
    pointer: str | None = "/seller_id"


@dataclass(frozen=True, slots=True)
class RouteSpec:
    id: str
    method: str
    path: str
    """Template such as ``/v1/live/{room_id}/cart/items``; a ``{name}`` matches one segment."""
    surface: SurfaceId
    direction: Direction
    links: tuple[str, ...]
    """JSON paths such as ``/items/*/url``; ``**`` means every string in the document."""
    strip: StripMode
    seller: SellerSource


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    source: str
    version: str
    """Digest of the policy's content: changes whenever any decision could change."""
    surfaces: Mapping[SurfaceId, Surface]
    platforms: Mapping[PlatformId, Platform]
    rules: tuple[Rule, ...]
    token_min_length: int
    token_max_length: int
    token_default_platform: PlatformId | None
    unwrap_depth: int
    redirect_params: frozenset[str]
    shorteners: frozenset[str]
    """Hosts (or registrable domains) of generic shorteners whose targets must be resolved."""
    rollout: RolloutDefaults
    seller: SellerSource
    routes: tuple[RouteSpec, ...]
    runtime: Mapping[str, Any]
    """The raw ``proxy:`` section; ``proxy.config`` validates it."""


class _Errors:
    """Collects validation problems so that one run reports them all."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{self.source}: {path}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


_TOP_KEYS: Final = frozenset(
    {"format", "name", "surfaces", "platforms", "tokens", "links", "rules", "rollout", "seller",
     "routes", "proxy"}
)


def parse_policy(data: object, source: str = "<policy>") -> Policy:
    """Validate a loaded policy document; raise ``ConfigError`` listing every problem.

    >>> parse_policy({"format": 1, "surfaces": {}, "platforms": {}, "rules": [{}]}, "p.yaml")
    Traceback (most recent call last):
    ...
    proxy.errors.ConfigError: p.yaml: rules[0].id: required
    p.yaml: rules[0].platforms: required
    p.yaml: rules[0].surfaces: required
    p.yaml: rules[0].effective_from: required
    p.yaml: rules[0].action: required
    """
    errors = _Errors(source)
    if not isinstance(data, Mapping):
        errors.add("(top level)", "expected a mapping")
        errors.raise_if_any()
    assert isinstance(data, Mapping)  # for mypy: raise_if_any raised otherwise
    for key in data:
        if key not in _TOP_KEYS:
            errors.add(str(key), f"unknown key (expected one of {', '.join(sorted(_TOP_KEYS))})")
    if data.get("format", SUPPORTED_FORMAT) != SUPPORTED_FORMAT:
        errors.add("format", f"unsupported format {data.get('format')!r} (expected {SUPPORTED_FORMAT})")
    reader = _Reader(errors)
    surfaces = reader.surfaces(data.get("surfaces"))
    platforms = reader.platforms(data.get("platforms"))
    rules = reader.rules(data.get("rules", []), surfaces, platforms)
    tokens = reader.mapping(data.get("tokens", {}), "tokens")
    token_min = reader.integer(tokens.get("min_length", 10), "tokens.min_length", 4, 64)
    token_max = reader.integer(tokens.get("max_length", 14), "tokens.max_length", token_min, 64)
    token_default = tokens.get("default_platform")
    if token_default is not None and token_default not in platforms:
        errors.add("tokens.default_platform", f"unknown platform {token_default!r}")
    links = reader.mapping(data.get("links", {}), "links")
    unwrap_depth = reader.integer(links.get("unwrap_depth", 4), "links.unwrap_depth", 0, 8)
    redirect_params = reader.strings(links.get("redirect_params", []), "links.redirect_params")
    shorteners = reader.lowered(links.get("shorteners", []), "links.shorteners")
    reader.unknown_keys(links, "links", {"unwrap_depth", "redirect_params", "shorteners"})
    reader.unknown_keys(tokens, "tokens", {"min_length", "max_length", "default_platform"})
    rollout = reader.rollout(data.get("rollout", {}), surfaces, {r.id for r in rules})
    seller = reader.seller(data.get("seller", {}), "seller", SellerSource())
    routes = reader.routes(data.get("routes", []), surfaces, seller)
    runtime = reader.mapping(data.get("proxy", {}), "proxy")
    errors.raise_if_any()
    return Policy(
        name=str(data.get("name", "policy")),
        source=source,
        version=_digest(data),
        surfaces=MappingProxyType(surfaces),
        platforms=MappingProxyType(platforms),
        rules=tuple(rules),
        token_min_length=token_min,
        token_max_length=token_max,
        token_default_platform=PlatformId(token_default) if token_default in platforms else None,
        unwrap_depth=unwrap_depth,
        redirect_params=frozenset(p.lower() for p in redirect_params),
        shorteners=shorteners,
        rollout=rollout,
        seller=seller,
        routes=tuple(routes),
        runtime=MappingProxyType(dict(runtime)),
    )


def _digest(data: Mapping[str, Any]) -> str:
    """A short content digest; the runtime section does not change decisions, so it is left out."""
    decisive = {k: v for k, v in data.items() if k != "proxy"}
    canonical = json.dumps(decisive, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


class _Reader:
    """Typed accessors that record a message instead of raising, so parsing can go on."""

    def __init__(self, errors: _Errors) -> None:
        self.errors = errors

    def mapping(self, value: object, path: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.errors.add(path, f"expected a mapping, got {type(value).__name__}")
            return {}
        return value

    def sequence(self, value: object, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.errors.add(path, f"expected a list, got {type(value).__name__}")
            return []
        return value

    def strings(self, value: object, path: str) -> tuple[str, ...]:
        items = self.sequence(value, path)
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item:
                self.errors.add(f"{path}[{i}]", "expected a non-empty string")
        return tuple(item for item in items if isinstance(item, str) and item)

    def lowered(self, value: object, path: str) -> frozenset[str]:
        return frozenset(s.lower().rstrip(".") for s in self.strings(value, path))

    def integer(self, value: object, path: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.errors.add(path, f"expected a whole number from {low} to {high}, got {value!r}")
            return low
        return value

    def enum(self, value: object, path: str, enum_type: Callable[[str], _T], default: _T) -> _T:
        try:
            return enum_type(str(value))
        except ValueError:
            choices = ", ".join(str(m) for m in enum_type.__members__.values())  # type: ignore[attr-defined]
            self.errors.add(path, f"unknown value {value!r} (expected one of {choices})")
            return default

    def regex(self, value: object, path: str) -> re.Pattern[str] | None:
        if not isinstance(value, str):
            self.errors.add(path, "expected a regular expression string")
            return None
        try:
            return re.compile(value)
        except re.error as exc:
            self.errors.add(path, f"invalid regular expression: {exc}")
            return None

    def instant(self, value: object, path: str) -> datetime | None:
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                self.errors.add(path, f"not an ISO 8601 timestamp: {value!r}")
                return None
        else:
            self.errors.add(path, f"expected an ISO 8601 timestamp with offset, got {value!r}")
            return None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            self.errors.add(path, f"timestamp {value!s} has no UTC offset (write e.g. +08:00)")
            return None
        return parsed

    def identifier(self, value: object, path: str) -> bool:
        if not isinstance(value, str) or not _ID.match(value):
            self.errors.add(path, f"invalid id {value!r} (lower-case letters, digits, _ . -)")
            return False
        return True

    def surfaces(self, value: object) -> dict[SurfaceId, Surface]:
        result: dict[SurfaceId, Surface] = {}
        if value is None:
            self.errors.add("surfaces", "required")
        for key, spec in self.mapping(value, "surfaces").items():
            path = f"surfaces.{key}"
            if self.identifier(key, path):
                body = self.mapping(spec, path)
                self.unknown_keys(body, path, {"title", "unresolved"})
                unresolved = self.enum(body.get("unresolved", "allow"), f"{path}.unresolved",
                                       Action, Action.ALLOW)
                if unresolved not in (Action.ALLOW, Action.BLOCK):
                    self.errors.add(f"{path}.unresolved", "must be allow or block")
                result[SurfaceId(key)] = Surface(SurfaceId(key), str(body.get("title", key)),
                                                 unresolved)
        return result

    def platforms(self, value: object) -> dict[PlatformId, Platform]:
        result: dict[PlatformId, Platform] = {}
        if value is None:
            self.errors.add("platforms", "required")
        owner: dict[str, str] = {}
        for key, spec in self.mapping(value, "platforms").items():
            path = f"platforms.{key}"
            if not self.identifier(key, path):
                continue
            body = self.mapping(spec, path)
            self.unknown_keys(body, path, {"title", "domains", "suffixes", "schemes", "app_packages",
                                       "token_words", "kinds"})
            domains = self.lowered(body.get("domains", []), f"{path}.domains")
            for domain in sorted(domains):
                if domain in owner:
                    self.errors.add(f"{path}.domains", f"{domain} is already listed under "
                                                        f"platforms.{owner[domain]}")
                owner[domain] = key
            kinds = tuple(
                pattern
                for i, item in enumerate(self.sequence(body.get("kinds", []), f"{path}.kinds"))
                if (pattern := self.kind_pattern(item, f"{path}.kinds[{i}]")) is not None
            )
            result[PlatformId(key)] = Platform(
                id=PlatformId(key),
                title=str(body.get("title", key)),
                domains=domains,
                suffixes=self.lowered(body.get("suffixes", []), f"{path}.suffixes"),
                schemes=self.lowered(body.get("schemes", []), f"{path}.schemes"),
                app_packages=frozenset(self.strings(body.get("app_packages", []),
                                                    f"{path}.app_packages")),
                token_words=self.strings(body.get("token_words", []), f"{path}.token_words"),
                kinds=kinds,
            )
        return result

    def kind_pattern(self, value: object, path: str) -> KindPattern | None:
        body = self.mapping(value, path)
        self.unknown_keys(body, path, {"kind", "hosts", "domains", "host", "path", "query"})
        if "kind" not in body:
            self.errors.add(f"{path}.kind", "required")
            return None
        conditions = {"hosts", "domains", "host", "path", "query"} & body.keys()
        if not conditions:
            self.errors.add(path, "needs at least one of hosts, domains, host, path, query")
        query = tuple(
            (str(name), self.regex(pattern, f"{path}.query.{name}") if pattern else None)
            for name, pattern in self.mapping(body.get("query", {}), f"{path}.query").items()
        )
        return KindPattern(
            kind=self.enum(body["kind"], f"{path}.kind", LinkKind, LinkKind.PAGE),
            hosts=self.lowered(body.get("hosts", []), f"{path}.hosts"),
            domains=self.lowered(body.get("domains", []), f"{path}.domains"),
            host=self.regex(body["host"], f"{path}.host") if "host" in body else None,
            path=self.regex(body["path"], f"{path}.path") if "path" in body else None,
            query=query,
        )

    def rules(
        self,
        value: object,
        surfaces: Mapping[SurfaceId, Surface],
        platforms: Mapping[PlatformId, Platform],
    ) -> list[Rule]:
        result: list[Rule] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(self.sequence(value, "rules")):
            path = f"rules[{i}]"
            body = self.mapping(item, path)
            self.unknown_keys(body, path, {"id", "platforms", "surfaces", "effective_from", "action",
                                       "response_action", "kinds", "target", "note"})
            for key in ("id", "platforms", "surfaces", "effective_from", "action"):
                if key not in body:
                    self.errors.add(f"{path}.{key}", "required")
            if len(body.keys() & {"id", "platforms", "surfaces", "effective_from", "action"}) < 5:
                continue
            rule_id = body["id"]
            if self.identifier(rule_id, f"{path}.id") and rule_id in seen:
                self.errors.add(f"{path}.id", f"duplicate rule id {rule_id!r} "
                                              f"(first at rules[{seen[rule_id]}])")
            seen.setdefault(rule_id, i)
            rule_platforms = self._known(body["platforms"], f"{path}.platforms", platforms,
                                         "platform")
            rule_surfaces = self._known(body["surfaces"], f"{path}.surfaces", surfaces, "surface")
            action = self.enum(body["action"], f"{path}.action", Action, Action.ALLOW)
            response_action = self.enum(body.get("response_action", action),
                                        f"{path}.response_action", Action, Action.ALLOW)
            target = body.get("target")
            if Action.REWRITE in (action, response_action) and not isinstance(target, str):
                self.errors.add(f"{path}.target", "required (a URL template) for action rewrite")
            kinds = (
                None
                if body.get("kinds") is None
                else frozenset(self.enum(k, f"{path}.kinds[{j}]", LinkKind, LinkKind.PAGE)
                               for j, k in enumerate(self.sequence(body["kinds"], f"{path}.kinds")))
            )
            instant = self.instant(body["effective_from"], f"{path}.effective_from")
            if instant is None:
                continue
            result.append(Rule(
                id=RuleId(str(rule_id)),
                platforms=frozenset(PlatformId(p) for p in rule_platforms),
                surfaces=frozenset(SurfaceId(s) for s in rule_surfaces),
                effective_from=instant,
                action=action,
                response_action=response_action,
                kinds=kinds,
                target=target if isinstance(target, str) else None,
                note=str(body.get("note", "")),
            ))
        self._same_rule_twice(result)
        return result

    def _same_rule_twice(self, rules: list[Rule]) -> None:
        seen: dict[tuple[object, ...], RuleId] = {}
        for rule in rules:
            key = (rule.platforms, rule.surfaces, rule.effective_from, rule.action, rule.kinds)
            if key in seen:
                self.errors.add(f"rules.{rule.id}", f"duplicates rule {seen[key]!r} "
                                                    "(same platforms, surfaces, time and action)")
            seen.setdefault(key, rule.id)

    def flag(self, value: object, path: str, base: FlagDefaults) -> FlagDefaults:
        body = self.mapping(value, path)
        self.unknown_keys(body, path, {"mode", "percent"})
        return FlagDefaults(
            mode=self.enum(body.get("mode", base.mode), f"{path}.mode", Mode, base.mode),
            percent=self.integer(body.get("percent", base.percent), f"{path}.percent", 0, 100),
        )

    def rollout(
        self, value: object, surfaces: Mapping[SurfaceId, Surface], rule_ids: set[RuleId]
    ) -> RolloutDefaults:
        body = self.mapping(value, "rollout")
        self.unknown_keys(body, "rollout", {"kill_switch", "default", "surfaces", "rules",
                                        "allow_sellers", "force_sellers"})
        default = self.flag(body.get("default", {}), "rollout.default", FlagDefaults())
        by_surface = {}
        for k, v in self.mapping(body.get("surfaces"), "rollout.surfaces").items():
            if k not in surfaces:
                self.errors.add(f"rollout.surfaces.{k}", "unknown surface")
            by_surface[SurfaceId(k)] = self.flag(v, f"rollout.surfaces.{k}", default)
        by_rule = {}
        for k, v in self.mapping(body.get("rules"), "rollout.rules").items():
            if k not in rule_ids:
                self.errors.add(f"rollout.rules.{k}", "unknown rule")
            by_rule[RuleId(k)] = self.flag(v, f"rollout.rules.{k}", default)
        kill = body.get("kill_switch", False)
        if not isinstance(kill, bool):
            self.errors.add("rollout.kill_switch", f"expected true or false, got {kill!r}")
        return RolloutDefaults(
            kill_switch=kill is True,
            default=default,
            surfaces=MappingProxyType(by_surface),
            rules=MappingProxyType(by_rule),
            allow_sellers=frozenset(self.strings(body.get("allow_sellers", []),
                                                 "rollout.allow_sellers")),
            force_sellers=frozenset(self.strings(body.get("force_sellers", []),
                                                 "rollout.force_sellers")),
        )

    def seller(self, value: object, path: str, base: SellerSource) -> SellerSource:
        body = self.mapping(value, path)
        self.unknown_keys(body, path, {"header", "pointer"})
        pointer = body.get("pointer", base.pointer)
        if pointer is not None and (not isinstance(pointer, str) or not pointer.startswith("/")):
            self.errors.add(f"{path}.pointer", f"expected a JSON pointer such as /seller_id, "
                                               f"got {pointer!r}")
        header = body.get("header", base.header)
        return SellerSource(header=str(header) if header else None,
                            pointer=pointer if isinstance(pointer, str) else None)

    def routes(
        self, value: object, surfaces: Mapping[SurfaceId, Surface], seller: SellerSource
    ) -> list[RouteSpec]:
        result: list[RouteSpec] = []
        seen: set[tuple[str, str]] = set()
        for i, item in enumerate(self.sequence(value, "routes")):
            path = f"routes[{i}]"
            body = self.mapping(item, path)
            self.unknown_keys(body, path, {"id", "method", "path", "surface", "direction", "links",
                                       "strip", "seller"})
            for key in ("id", "method", "path", "surface", "links"):
                if key not in body:
                    self.errors.add(f"{path}.{key}", "required")
            if not {"id", "method", "path", "surface", "links"} <= body.keys():
                continue
            method, template = str(body["method"]).upper(), str(body["path"])
            if not template.startswith("/"):
                self.errors.add(f"{path}.path", f"must start with '/', got {template!r}")
            if (method, template) in seen:
                self.errors.add(path, f"duplicate route {method} {template}")
            seen.add((method, template))
            if body["surface"] not in surfaces:
                self.errors.add(f"{path}.surface", f"unknown surface {body['surface']!r}")
            links = self.strings(body["links"], f"{path}.links")
            for j, link in enumerate(links):
                if link != "**" and not link.startswith("/"):
                    self.errors.add(f"{path}.links[{j}]", f"expected '**' or a path such as "
                                                          f"/items/*/url, got {link!r}")
            result.append(RouteSpec(
                id=str(body["id"]),
                method=method,
                path=template,
                surface=SurfaceId(str(body["surface"])),
                direction=self.enum(body.get("direction", "request"), f"{path}.direction",
                                    Direction, Direction.REQUEST),
                links=links,
                strip=self.enum(body.get("strip", "element"), f"{path}.strip", StripMode,
                                StripMode.ELEMENT),
                seller=self.seller(body.get("seller", {}), f"{path}.seller", seller),
            ))
        return result

    def _known(
        self, value: object, path: str, known: Mapping[Any, Any], what: str
    ) -> tuple[str, ...]:
        names = self.strings(value, path)
        if isinstance(value, list) and not value:
            self.errors.add(path, f"lists no {what}")
        for j, name in enumerate(names):
            if name not in known:
                self.errors.add(f"{path}[{j}]", f"unknown {what} {name!r} "
                                                f"(known: {', '.join(sorted(known)) or 'none'})")
        return tuple(n for n in names if n in known)

    def unknown_keys(self, body: Mapping[str, Any], path: str, allowed: Iterable[str]) -> None:
        allowed_set = frozenset(allowed)
        for key in body:
            if key not in allowed_set:
                self.errors.add(f"{path}.{key}", f"unknown key (expected one of "
                                                 f"{', '.join(sorted(allowed_set))})")
