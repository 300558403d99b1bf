"""The real console script: check (human and JSON), stdin forms, validate-config, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.local import console_command

CUTOFF = "2022-03-01T00:00:00+08:00"
SCRIPT = shutil.which("cart-link-proxy")


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*console_command(), *args], input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)


def test_console_script_is_installed() -> None:
    assert SCRIPT is not None, "pip install -e . installs the cart-link-proxy console script"


def test_json_lines_in_input_order() -> None:
    inputs = ["https://item.taobao.com/item.htm?id=1", "https://item.jd.com/1.html",
              "https://www.kuaishou.com/x", "no links here"]
    result = run("check", "--surface", "short_video_cart", "--at", CUTOFF, "--json", *inputs)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["input"] for r in records] == inputs
    assert [r["action"] for r in records] == ["block", "allow", "allow", "allow"]
    assert [r["platform"] for r in records] == ["taobao", "jd", "own", None]
    assert records[0]["rule"] == "taobao-cutoff-2022"
    assert records[0]["links"][0]["kind"] == "item"
    assert records[0]["links"][0]["host"] == "item.taobao.com"
    assert records[0]["surface"] == "short_video_cart"
    assert records[0]["at"] == CUTOFF
    assert all(r["pending"] == [] for r in records)


def test_pending_before_cutoff() -> None:
    result = run("check", "--surface", "livestream_cart", "--at", "2022-02-28T15:59:59Z",
                 "--json", "https://item.jd.com/1.html")
    record = json.loads(result.stdout)
    assert record["action"] == "allow"
    assert record["pending"][0]["rule"] == "jd-livestream-cutoff-2022"
    assert record["pending"][0]["effective_from"] == CUTOFF


def test_human_output_explains() -> None:
    result = run("check", "--surface", "livestream_cart", "--at", CUTOFF,
                 "今晚 https://r.example.com/go?url=https%3A%2F%2Fitem.jd.com%2F1.html")
    assert result.returncode == 0
    assert result.stdout.startswith("BLOCK")
    assert "jd-livestream-cutoff-2022" in result.stdout
    assert "depth 1" in result.stdout


def test_stdin_lines_and_jsonl_input() -> None:
    plain = run("check", "--surface", "product_detail", "--at", CUTOFF, "--json", "-",
                stdin="https://item.taobao.com/item.htm?id=1\nhello\n")
    assert [json.loads(x)["action"] for x in plain.stdout.splitlines()] == ["block", "allow"]
    text = "first line\n\tthen ￥AbCdEfGhIj1￥ 打开手机淘宝"
    jsonl = run("check", "--surface", "product_detail", "--at", CUTOFF, "--json",
                "--jsonl-input", stdin=json.dumps(text, ensure_ascii=False) + "\n")
    (record,) = [json.loads(x) for x in jsonl.stdout.splitlines()]
    assert record["input"] == text
    assert record["action"] == "block"
    assert record["links"][0]["kind"] == "password_token"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "--surface", "homepage", "x"], "unknown surface 'homepage'"),
        (["check", "--surface", "livestream_cart", "--at", "2022-03-01T00:00:00", "x"],
         "has no UTC offset"),
        (["check", "--surface", "livestream_cart"], "nothing to check"),
        (["check", "x"], "--surface"),
        (["check", "--surface", "livestream_cart", "--config", "/nonexistent.yaml", "x"],
         "/nonexistent.yaml: cannot read"),
    ],
    ids=["unknown-surface", "naive-at", "no-input", "missing-surface", "missing-config"],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_validate_config(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "config" / "policy.yaml"
    ok = run("validate-config", str(shipped))
    assert (ok.returncode, ok.stdout.strip()) == (0, "ok")
    broken = tmp_path / "policy.yaml"
    broken.write_text(shipped.read_text(encoding="utf-8").replace(
        'effective_from: "2022-03-01T00:00:00+08:00"', 'effective_from: "2022-03-01T00:00:00"', 1),
        encoding="utf-8")
    bad = run("validate-config", str(broken))
    assert bad.returncode == 2
    assert f"{broken}: rules[0].effective_from: timestamp 2022-03-01T00:00:00 has no UTC offset" \
        in bad.stderr


def test_custom_policy_drives_the_cli(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "config" / "policy.yaml"
    custom = tmp_path / "policy.yaml"
    custom.write_text(shipped.read_text(encoding="utf-8").replace(
        "    surfaces: [livestream_cart]\n", "    surfaces: [livestream_cart, short_video_cart]\n"),
        encoding="utf-8")
    result = run("check", "--config", str(custom), "--surface", "short_video_cart", "--at", CUTOFF,
                 "--json", "https://item.jd.com/1.html")
    assert json.loads(result.stdout)["action"] == "block"
