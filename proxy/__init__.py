"""cart-link-proxy: a link-policy reverse proxy and aiohttp middleware for cart APIs.

The public names are loaded on first use, so ``import proxy.core`` stays free of aiohttp.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Engine",
    "__version__",
    "build_engine",
    "create_app",
    "load_policy",
    "policy_middleware",
]

_HOMES = {
    "Engine": "proxy.core.engine",
    "build_engine": "proxy.policyfile",
    "load_policy": "proxy.policyfile",
    "create_app": "proxy.app",
    "policy_middleware": "proxy.middleware",
}

if TYPE_CHECKING:
    from proxy.app import create_app
    from proxy.core.engine import Engine
    from proxy.middleware import policy_middleware
    from proxy.policyfile import build_engine, load_policy


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'proxy' has no attribute {name!r}")
    return getattr(import_module(home), name)
