"""The package's public names (httpx's test_exported_members)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import proxy


def test_all_names_resolve() -> None:
    for name in proxy.__all__:
        assert getattr(proxy, name) is not None, name
    assert callable(proxy.create_app)
    assert callable(proxy.policy_middleware)


def test_exported_members_are_listed() -> None:
    assert sorted(proxy.__all__) == sorted(
        ["Engine", "__version__", "build_engine", "create_app", "load_policy", "policy_middleware"]
    )


def test_unknown_name() -> None:
    with pytest.raises(AttributeError, match="nothing"):
        proxy.nothing  # type: ignore[attr-defined]  # noqa: B018


def test_importing_the_core_does_not_import_the_edges() -> None:
    code = ("import sys, proxy.core.engine; "
            "print(sorted(m for m in ('aiohttp', 'redis', 'prometheus_client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
