"""How ``plait`` commands print: aligned tables and short times for people, JSON for scripts."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any


def emit(args: argparse.Namespace, data: Any, lines: Callable[[], Sequence[str]]) -> None:
    """Print ``data`` as JSON with ``--json``, else the human ``lines``."""
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print("\n".join(lines()))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows under headers, each column as wide as its widest cell."""
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    return [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip()
        for row in (headers, *rows)
    ]


def moment(value: datetime | None) -> str:
    """A date and time in the local time zone, to the second ("-" for none)."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def clock(value: datetime | None) -> str:
    """A local time of day to the millisecond ("" for none)."""
    return value.astimezone().strftime("%H:%M:%S.%f")[:-3] if value else ""


def duration(value: timedelta) -> str:
    """``12 ms``, ``3.4 s``, ``5m07s`` or ``2h05m``."""
    seconds = value.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def span(start: datetime | None, end: datetime | None) -> str:
    """How long from ``start`` to ``end`` ("" unless both are known)."""
    return duration(end - start) if start and end else ""


def ago(value: datetime | timedelta | None, now: datetime | None = None) -> str:
    """An age (``3.2 s``) or how long ago a moment was (``3.2 s ago``); "" for none."""
    if value is None:
        return ""
    if isinstance(value, timedelta):
        return duration(value)
    return duration((now or datetime.now(tz=UTC)) - value) + " ago"
