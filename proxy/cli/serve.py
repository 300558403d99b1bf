"""Placeholder: replaced by the module's owner."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add this group's sub-commands."""
