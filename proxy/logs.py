"""JSON logs and the decision audit trail.

``JSONFormatter`` writes one JSON object per line (``ts``, ``level``, ``logger``, ``message``, the
fields passed as ``extra={"fields": {...}}``, and ``exc`` for a traceback). ``configure_logging``
installs it on the root logger once, at startup. ``audit`` writes the record support staff read when
a seller appeals: one line per decision that was not a plain allow, on ``cart_link_proxy.audit``.

Never pass a body or a whole URL as a field; fields named like a secret (``token``,
``authorization``, ``cookie``, ...) or a body are redacted wherever they appear, nested ones too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from json import dumps as json_dumps
from typing import Final

__all__ = [
    "AUDIT_LOGGER",
    "REDACTED",
    "AuditRecord",
    "JSONFormatter",
    "audit",
    "configure_logging",
]

AUDIT_LOGGER: Final = "cart_link_proxy.audit"
REDACTED: Final = "[redacted]"
_SECRET_KEYS: Final = frozenset(
    {
        "token",
        "authorization",
        "admin_token",
        "password",
        "secret",
        "cookie",
        "set-cookie",
        "body",
    }
)
_RESERVED: Final = ("ts", "level", "logger", "message", "exc")
_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _redact_mapping(fields: Mapping[object, object]) -> dict[str, object]:
    return {
        str(k): REDACTED if str(k).lower() in _SECRET_KEYS else _redact(v)
        for k, v in fields.items()
    }


def _redact(value: object) -> object:
    if isinstance(value, Mapping):
        return _redact_mapping(value)
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


class JSONFormatter(logging.Formatter):
    """One JSON object per line; non-ASCII text (Chinese titles, tokens' words) stays readable."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            # The envelope keys win: a field cannot forge the level or the timestamp.
            redacted = _redact_mapping(fields)
            entry.update({k: v for k, v in redacted.items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["exc"] = self.formatStack(record.stack_info)
        return json_dumps(entry, ensure_ascii=False, separators=(",", ":"), default=str)


def configure_logging(level: str = "INFO", *, json: bool = True) -> None:
    """Send every log record to stderr, as JSON lines (or plain text with ``json=False``).

    Replaces the root logger's handlers, so calling it again reconfigures instead of duplicating.
    Raises ``ValueError`` naming the option when ``level`` is not a standard level name.
    """
    name = level.upper()
    if name not in _LEVELS:
        raise ValueError(f"log level: {level!r} is not one of {', '.join(_LEVELS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JSONFormatter()
        if json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(name)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """Why one request was not a plain allow; enough to answer a seller's appeal."""

    request_id: str
    surface: str
    seller: str | None
    """The seller id as sent (header or body); None when the request named none."""
    host: str | None
    """Host of the offending link (never the whole URL, whose query may carry tracking ids)."""
    platform: str | None
    rule: str | None
    action: str
    """``block``, ``strip`` or ``rewrite``; in shadow mode what enforce would have done."""
    mode: str
    route: str
    pointer: str | None
    """JSON pointer of the offending field in the document."""


def audit(logger: logging.Logger, record: AuditRecord) -> None:
    """Write ``record`` as one line; an ``allow`` is not audited and writes nothing."""
    if record.action == "allow":
        return
    logger.info(
        "link decision: %s (%s)",
        record.action,
        record.mode,
        extra={"fields": {"event": "link_decision", **asdict(record)}},
    )
