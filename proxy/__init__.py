"""cart-link-proxy: a link-policy reverse proxy and aiohttp middleware for cart APIs."""

from __future__ import annotations

__version__ = "0.1.0"
