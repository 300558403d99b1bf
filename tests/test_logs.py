"""JSON log lines, redaction, configure_logging and the audit record."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from proxy.logs import AUDIT_LOGGER, REDACTED, AuditRecord, JSONFormatter, audit, configure_logging


def render(message: str, *args: object, **extra: object) -> dict[str, object]:
    record = logging.LogRecord(
        "cart_link_proxy.test", logging.WARNING, __file__, 1, message, args, None
    )
    for key, val in extra.items():
        setattr(record, key, val)
    line = JSONFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def record_for(action: str = "block", mode: str = "enforce") -> AuditRecord:
    return AuditRecord(
        request_id="req-1",
        surface="livestream_cart",
        seller="s1",
        host="item.taobao.com",
        platform="taobao",
        rule="taobao-cutoff-2022",
        action=action,
        mode=mode,
        route="live-cart-add",
        pointer="/items/0/url",
    )


def test_envelope() -> None:
    entry = render("hello %s", "世界")
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "cart_link_proxy.test"
    assert entry["message"] == "hello 世界"
    ts = datetime.fromisoformat(str(entry["ts"]))
    assert ts.utcoffset() == timedelta(0)
    assert str(entry["ts"]).endswith("+00:00")


def test_fields_are_merged_but_cannot_forge_the_envelope() -> None:
    entry = render("m", fields={"route": "live-cart-add", "level": "DEBUG", "n": 3})
    assert entry["route"] == "live-cart-add"
    assert entry["n"] == 3
    assert entry["level"] == "WARNING"


def test_unserialisable_values_are_stringified() -> None:
    entry = render("m", fields={"at": datetime(2022, 3, 1), "ids": ("a", "b")})
    assert entry["at"] == "2022-03-01 00:00:00"
    assert entry["ids"] == ["a", "b"]


@pytest.mark.parametrize(
    "key", ["token", "Authorization", "admin_token", "cookie", "body"], ids=str
)
def test_secrets_and_bodies_are_redacted(key: str) -> None:
    entry = render("m", fields={key: "Bearer s3cr3t", "nested": {"inner": [{key: "s3cr3t"}]}})
    assert entry[key] == REDACTED
    assert entry["nested"] == {"inner": [{key: REDACTED}]}
    assert "s3cr3t" not in json.dumps(entry)


def test_exceptions_are_kept_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JSONFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exc"]


def test_configure_logging_writes_json_to_stderr(
    restore_root: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("debug")
    configure_logging("INFO")  # reconfigures, does not add a second handler
    logging.getLogger("cart_link_proxy.x").debug("hidden")
    logging.getLogger("cart_link_proxy.x").info("shown", extra={"fields": {"k": "v"}})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["k"] == "v"


def test_configure_logging_plain_text(
    restore_root: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("WARNING", json=False)
    logging.getLogger("cart_link_proxy.x").warning("plain")
    assert capsys.readouterr().err.rstrip().endswith("WARNING cart_link_proxy.x: plain")


def test_configure_logging_rejects_unknown_level(restore_root: None) -> None:
    with pytest.raises(ValueError, match="log level: 'LOUD'"):
        configure_logging("LOUD")


def test_audit_writes_one_json_line_per_decision(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger(AUDIT_LOGGER)
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        audit(logger, record_for("block", "enforce"))
        audit(logger, record_for("strip", "shadow"))
        audit(logger, record_for("allow", "enforce"))
    assert [r.name for r in caplog.records] == [AUDIT_LOGGER, AUDIT_LOGGER]
    entry = json.loads(JSONFormatter().format(caplog.records[0]))
    assert entry["event"] == "link_decision"
    assert {k: entry[k] for k in ("request_id", "surface", "seller", "host", "platform")} == {
        "request_id": "req-1",
        "surface": "livestream_cart",
        "seller": "s1",
        "host": "item.taobao.com",
        "platform": "taobao",
    }
    assert (entry["rule"], entry["action"], entry["mode"]) == (
        "taobao-cutoff-2022",
        "block",
        "enforce",
    )
    assert (entry["route"], entry["pointer"]) == ("live-cart-add", "/items/0/url")
    assert json.loads(JSONFormatter().format(caplog.records[1]))["mode"] == "shadow"


def test_audit_record_is_frozen() -> None:
    record = record_for()
    with pytest.raises(AttributeError):
        record.action = "allow"  # type: ignore[misc]
