"""The purity contract of proxy.core, checked on the source: no I/O, clock, env or edge library."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "proxy" / "core"
ALLOWED_THIRD_PARTY = {"ada_url", "mmh3"}
ALLOWED_FIRST_PARTY = {"proxy.core", "proxy.errors"}
FORBIDDEN_STDLIB = {
    "asyncio", "socket", "os", "time", "random", "secrets", "subprocess", "threading",
    "multiprocessing", "io", "pathlib", "shutil", "tempfile", "logging", "urllib.request",
    "http", "ssl", "select", "signal", "sqlite3",
}
FORBIDDEN_CALLS = {"open", "print", "input"}
FORBIDDEN_ATTRIBUTES = {("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"),
                        ("date", "today")}


def _imports(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _allowed(module: str) -> bool:
    top = module.split(".")[0]
    if any(module == p or module.startswith(p + ".") for p in ALLOWED_FIRST_PARTY):
        return True
    if top in ALLOWED_THIRD_PARTY:
        return True
    if module in FORBIDDEN_STDLIB or top in FORBIDDEN_STDLIB:
        return False
    return top in sys.stdlib_module_names


CORE_FILES = sorted(CORE.glob("*.py"))


@pytest.mark.parametrize("path", CORE_FILES, ids=[p.name for p in CORE_FILES])
def test_core_module_is_pure(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad_imports = [m for m in _imports(tree) if not _allowed(m)]
    assert not bad_imports, f"{path.name} imports {bad_imports}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_CALLS, f"{path.name} calls {node.func.id}()"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert (node.value.id, node.attr) not in FORBIDDEN_ATTRIBUTES, (
                f"{path.name} reads the clock: {node.value.id}.{node.attr}"
            )


def test_the_check_itself_can_fail() -> None:
    assert not _allowed("aiohttp")
    assert not _allowed("asyncio")
    assert not _allowed("redis.asyncio")
    assert _allowed("proxy.core.model")
    assert not _allowed("proxy.app")
