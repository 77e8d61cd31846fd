"""Workflow definitions: pure, immutable data shared by emitters and consumers."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, Literal, TypeVar, get_args, overload

from pydantic import BaseModel

from ._errors import InvalidDefinitionError, NonRetryableError, cause_name

PerKeyStrategy = Literal["queue", "cancel_running", "reject_new"]
"""What a run does when its concurrency key's runs are all live (``per_key_strategy=``)."""
PER_KEY_STRATEGIES: tuple[str, ...] = get_args(PerKeyStrategy)

__all__ = ["RetryPolicy", "Step", "Workflow"]

InputT = TypeVar("InputT", bound=BaseModel)
OutputT = TypeVar("OutputT")

STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
WORKFLOW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how fast a failed attempt is tried again.

    The delay before attempt ``n + 1`` is ``initial_interval * backoff ** (n - 1)``, capped at
    ``max_interval``. Retries wait in a delayed set in Redis, never in a sleeping worker.
    """

    max_attempts: int = 3
    """Total attempts, the first included (1 means no retry)."""
    initial_interval: timedelta = timedelta(seconds=1)
    """Delay before the second attempt."""
    backoff: float = 2.0
    """Factor applied to the delay after each failed attempt."""
    max_interval: timedelta = timedelta(seconds=60)
    """Upper bound of any delay."""
    non_retryable: tuple[type[BaseException] | str, ...] = ()
    """Exception classes (or their ``cause_type`` strings: ``"module.QualName"``, or
    ``"plait.StepTimeout"`` for plait's own causes) that fail the step at once."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidDefinitionError("RetryPolicy.max_attempts must be >= 1")
        if self.backoff < 1:
            raise InvalidDefinitionError("RetryPolicy.backoff must be >= 1")
        if self.initial_interval < timedelta(0) or self.max_interval < timedelta(0):
            raise InvalidDefinitionError("RetryPolicy intervals must not be negative")

    def delay(self, attempt: int) -> timedelta:
        """The delay after failed attempt number ``attempt`` (1-based)."""
        seconds = self.initial_interval.total_seconds() * self.backoff ** max(attempt - 1, 0)
        return min(timedelta(seconds=seconds), self.max_interval)

    def next_delay(self, attempt: int, error: BaseException) -> timedelta | None:
        """How long to wait before trying again after attempt ``attempt`` failed with ``error``.

        This is the retry decision, made in one place for steps, hooks, rollbacks and event
        handlers.

        Args:
            attempt: the number of the attempt that failed (1-based).
            error: what it raised.

        Returns:
            The delay before the next attempt (see :meth:`delay`), or None when the job has
            failed for good: ``attempt`` was the last of ``max_attempts``, or ``error`` is not
            retryable (see :meth:`is_retryable`).
        """
        if attempt >= self.max_attempts or not self.is_retryable(error):
            return None
        return self.delay(attempt)

    def is_retryable(self, error: BaseException) -> bool:
        """False for :class:`NonRetryableError` and the classes listed in ``non_retryable``."""
        if isinstance(error, NonRetryableError):
            return False
        names = {cause_name(kind) for kind in type(error).__mro__}
        for entry in self.non_retryable:
            if isinstance(entry, str):
                if entry in names or _resolves_to_base(entry, error):
                    return False
            elif isinstance(error, entry):
                return False
        return True


def _resolves_to_base(dotted: str, error: BaseException) -> bool:
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        return False
    try:
        kind = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return False
    return isinstance(kind, type) and isinstance(error, kind)


@dataclass(frozen=True)
class Step:
    """One step of a workflow, with its options.

    Args:
        name: matches ``^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$``, unique in its workflow.
        retry: the step's retry policy (default: the provider's).
        timeout: limit of one attempt (default: only the run's deadline).
        output: a pydantic model the step's result is validated into in ``ctx.results``.
        rollback_retry: retry policy of the step's rollback (default: ``retry``).
        rate_limit: at most ``n`` starts per ``period`` across all instances.
    """

    name: str
    retry: RetryPolicy | None = field(default=None, kw_only=True)
    timeout: timedelta | None = field(default=None, kw_only=True)
    output: type[BaseModel] | None = field(default=None, kw_only=True)
    rollback_retry: RetryPolicy | None = field(default=None, kw_only=True)
    rate_limit: tuple[int, timedelta] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not STEP_NAME.match(self.name):
            raise InvalidDefinitionError(
                f"invalid step name {self.name!r}: must match {STEP_NAME.pattern}"
            )
        if self.timeout is not None and self.timeout <= timedelta(0):
            raise InvalidDefinitionError(f"step {self.name!r}: timeout must be positive")
        if self.rate_limit is not None:
            count, period = self.rate_limit
            if count < 1 or period <= timedelta(0):
                raise InvalidDefinitionError(f"step {self.name!r}: invalid rate_limit")


class Workflow(Generic[InputT, OutputT]):
    """An immutable workflow definition: named groups of steps run in order.

    ``.step()`` and ``.parallel()`` return a new definition, so a definition can be shared
    freely between emitters and consumers::

        place_order = (
            Workflow("place-order", input=Order, output=Receipt)
            .step("reserve", retry=RetryPolicy(max_attempts=5))
            .parallel("charge", "notify")
            .step("ship")
        )

    Args:
        name: the workflow's name, unique in a prefix.
        input: the pydantic model of the run's input.
        output: the model the run's result is validated into (``None``: plain JSON).
        concurrency: at most this many running steps of this workflow across all instances.
        concurrency_key: the run's concurrency key from its input (``lambda order:
            order.customer_id``): at most ``per_key_limit`` runs of one key are live at once
            across all instances; ``execute(concurrency_key=...)`` gives it per call instead.
        per_key_limit: runs of one concurrency key live at once (default 1).
        per_key_strategy: what a run that finds its key's runs all live does: ``queue``
            (default: it waits, PENDING, and starts when one ends, oldest first per key),
            ``cancel_running`` (the oldest live run of the key is cancelled, which
            compensates it, and the new run starts once it ended) or ``reject_new``
            (``execute`` raises :class:`ConcurrencyKeyBusyError`, nothing is written).
    """

    __slots__ = (
        "concurrency",
        "concurrency_key",
        "groups",
        "input",
        "name",
        "output",
        "per_key_limit",
        "per_key_strategy",
    )

    @overload
    def __init__(
        self: Workflow[InputT, Any],
        name: str,
        *,
        input: type[InputT],
        output: None = None,
        concurrency: int | None = None,
        concurrency_key: Callable[[InputT], str] | None = None,
        per_key_limit: int = 1,
        per_key_strategy: PerKeyStrategy = "queue",
        _groups: tuple[tuple[Step, ...], ...] = (),
    ) -> None: ...

    @overload
    def __init__(
        self,
        name: str,
        *,
        input: type[InputT],
        output: type[OutputT],
        concurrency: int | None = None,
        concurrency_key: Callable[[InputT], str] | None = None,
        per_key_limit: int = 1,
        per_key_strategy: PerKeyStrategy = "queue",
        _groups: tuple[tuple[Step, ...], ...] = (),
    ) -> None: ...

    def __init__(
        self,
        name: str,
        *,
        input: type[InputT],
        output: type[OutputT] | None = None,
        concurrency: int | None = None,
        concurrency_key: Callable[[InputT], str] | None = None,
        per_key_limit: int = 1,
        per_key_strategy: PerKeyStrategy = "queue",
        _groups: tuple[tuple[Step, ...], ...] = (),
    ) -> None:
        if not isinstance(name, str) or not WORKFLOW_NAME.match(name):
            raise InvalidDefinitionError(
                f"invalid workflow name {name!r}: must match {WORKFLOW_NAME.pattern}"
            )
        if not (isinstance(input, type) and issubclass(input, BaseModel)):
            raise InvalidDefinitionError(f"workflow {name!r}: input must be a pydantic model")
        if concurrency is not None and concurrency < 1:
            raise InvalidDefinitionError(f"workflow {name!r}: concurrency must be >= 1")
        if not isinstance(per_key_limit, int) or per_key_limit < 1:
            raise InvalidDefinitionError(f"workflow {name!r}: per_key_limit must be >= 1")
        if per_key_strategy not in PER_KEY_STRATEGIES:
            raise InvalidDefinitionError(
                f"workflow {name!r}: per_key_strategy must be one of {PER_KEY_STRATEGIES}"
            )
        if concurrency_key is not None and not callable(concurrency_key):
            raise InvalidDefinitionError(f"workflow {name!r}: concurrency_key must be callable")
        self.name = name
        self.input: type[InputT] = input
        self.output: type[OutputT] | None = output
        self.concurrency = concurrency
        self.concurrency_key = concurrency_key
        self.per_key_limit = per_key_limit
        self.per_key_strategy: PerKeyStrategy = per_key_strategy
        self.groups: tuple[tuple[Step, ...], ...] = _groups

    def __setattr__(self, key: str, value: Any) -> None:
        if hasattr(self, "groups"):
            raise AttributeError("Workflow definitions are immutable")
        object.__setattr__(self, key, value)

    def __repr__(self) -> str:
        plan = " -> ".join("|".join(s.name for s in g) for g in self.groups) or "(no steps)"
        return f"Workflow({self.name!r}: {plan})"

    def step(
        self,
        name: str | Step,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        output: type[BaseModel] | None = None,
        rollback_retry: RetryPolicy | None = None,
        rate_limit: tuple[int, timedelta] | None = None,
    ) -> Workflow[InputT, OutputT]:
        """Return a new definition with one more sequential step."""
        if isinstance(name, Step):
            step = name
        else:
            step = Step(
                name,
                retry=retry,
                timeout=timeout,
                output=output,
                rollback_retry=rollback_retry,
                rate_limit=rate_limit,
            )
        return self._extend((step,))

    def parallel(self, *steps: str | Step) -> Workflow[InputT, OutputT]:
        """Return a new definition with a group of two or more steps run concurrently."""
        if len(steps) < 2:
            raise InvalidDefinitionError(
                f"workflow {self.name!r}: parallel() needs at least two steps"
            )
        return self._extend(tuple(s if isinstance(s, Step) else Step(s) for s in steps))

    def _extend(self, group: tuple[Step, ...]) -> Workflow[InputT, OutputT]:
        seen = {s.name for s in self.steps}
        for step in group:
            if step.name in seen:
                raise InvalidDefinitionError(
                    f"workflow {self.name!r}: duplicate step name {step.name!r}"
                )
            seen.add(step.name)
        extended: Workflow[InputT, OutputT] = Workflow(
            self.name,
            input=self.input,
            output=self.output,
            concurrency=self.concurrency,
            concurrency_key=self.concurrency_key,
            per_key_limit=self.per_key_limit,
            per_key_strategy=self.per_key_strategy,
            _groups=(*self.groups, group),
        )
        return extended

    @property
    def steps(self) -> tuple[Step, ...]:
        """Every step, in definition order."""
        return tuple(step for group in self.groups for step in group)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def get_step(self, name: str) -> Step:
        """The step called ``name``; ``KeyError`` when there is none."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)
