"""Reading the policy file and the suffix list: errors name the file; nothing is downloaded."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from proxy.errors import ConfigError
from proxy.policyfile import build_engine, default_policy_path, load_policy, suffix_splitter

SHIPPED = Path(__file__).resolve().parents[1] / "config" / "policy.yaml"


def test_packaged_default_is_the_shipped_policy() -> None:
    assert default_policy_path().read_bytes() == SHIPPED.read_bytes()
    assert load_policy().version == load_policy(SHIPPED).version


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("surfaces: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{path}:2:1: invalid YAML: expected ',' or ']'"):
        load_policy(path)


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("format: 1\nformat: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{path}:2:1: invalid YAML: duplicate key 'format'"):
        load_policy(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy(tmp_path / "absent.yaml")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.usefixtures("no_network")
def test_bundled_suffix_list_is_offline() -> None:
    split = suffix_splitter()
    assert split("item.taobao.com") == ("com", "taobao.com")
    assert split("a.b.co.uk") == ("co.uk", "b.co.uk")
    build_engine(load_policy())


@pytest.mark.usefixtures("no_network")
def test_psl_file_from_config(tmp_path: Path) -> None:
    psl = tmp_path / "psl.dat"
    psl.write_text("// test list\ncom\nexample\n", encoding="utf-8")
    split = suffix_splitter(psl)
    assert split("shop.brand.example") == ("example", "brand.example")
    assert split("a.b.co.uk")[0] != "co.uk"  # only what the file lists


def test_missing_psl_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        suffix_splitter(tmp_path / "none.dat")
