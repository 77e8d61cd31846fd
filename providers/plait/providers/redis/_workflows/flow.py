"""The flow-control options of one ``execute``: per-key concurrency and debounce.

Both are checked here, before anything is written, and handed to the execute scripts as plain
values: ``(concurrency key, limit, strategy)`` for ``run_execute.lua`` and ``(debounce key,
quiet ms, max wait ms)`` for ``run_debounce.lua``. An execute with neither pays nothing for them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from plait.workflows import Workflow

from .._core.payload import UnstorableError, check_text


def debounce_of(
    debounce: timedelta | None,
    key: str | None,
    max_wait: timedelta | None,
    idempotency_key: str | None,
    per_key: tuple[str, int, str] | None,
) -> tuple[str, int, int] | None:
    """(debounce key, quiet ms, max wait ms or 0) of an execute, or None without debounce."""
    if debounce is None:
        if key is not None or max_wait is not None:
            raise UnstorableError("debounce_key and debounce_max_wait need debounce=")
        return None
    if not isinstance(debounce, timedelta) or debounce <= timedelta(0):
        raise UnstorableError(f"debounce must be a positive timedelta, not {debounce!r}")
    if max_wait is not None and (not isinstance(max_wait, timedelta) or max_wait <= timedelta(0)):
        raise UnstorableError(f"debounce_max_wait must be a positive timedelta, not {max_wait!r}")
    if not isinstance(key, str) or not key:
        raise UnstorableError("debounce= needs a debounce_key (a non-empty string)")
    check_text(key, "the debounce key")
    if idempotency_key is not None or per_key is not None:
        raise UnstorableError("debounce= does not go with an idempotency or concurrency key")
    ms = timedelta(milliseconds=1)
    return key, max(debounce // ms, 1), 0 if max_wait is None else max(max_wait // ms, 1)


def per_key_of(
    definition: Workflow[Any, Any], model: BaseModel, key: str | None
) -> tuple[str, int, str] | None:
    """(concurrency key, limit, strategy) of a run, or None when it has no key."""
    if key is None and definition.concurrency_key is not None:
        key = definition.concurrency_key(model)
    if key is None:
        return None
    if not isinstance(key, str) or not key:
        raise UnstorableError(f"a concurrency key is a non-empty string, not {key!r}")
    check_text(key, "the concurrency key")
    return key, definition.per_key_limit, definition.per_key_strategy
