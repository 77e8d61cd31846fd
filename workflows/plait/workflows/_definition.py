"""Workflow definitions: pure, immutable data shared by emitters and consumers."""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, get_args, overload

from pydantic import BaseModel

from ._errors import InvalidDefinitionError, NonRetryableError, cause_name

PerKeyStrategy = Literal["queue", "cancel_running", "reject_new"]
"""What a run does when its concurrency key's runs are all live (``per_key_strategy=``)."""
PER_KEY_STRATEGIES: tuple[str, ...] = get_args(PerKeyStrategy)

if TYPE_CHECKING:
    from ._context import WorkflowContext

__all__ = ["RetryPolicy", "Sleep", "Step", "Wait", "Workflow"]

InputT = TypeVar("InputT", bound=BaseModel)
OutputT = TypeVar("OutputT")

STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
WORKFLOW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
META_FIELD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""What a meta field a workflow indexes (``Workflow(indexed_meta=)``) is named like."""


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


def _policy(policy: RetryPolicy | None) -> list[Any] | None:
    if policy is None:
        return None
    return [
        policy.max_attempts,
        policy.initial_interval.total_seconds(),
        policy.backoff,
        policy.max_interval.total_seconds(),
        sorted(
            entry if isinstance(entry, str) else cause_name(entry) for entry in policy.non_retryable
        ),
    ]


def _step_options(step: Step) -> list[Any]:
    """What of a step makes a definition's version: its name and options."""
    return [
        step.name,
        _policy(step.retry),
        _policy(step.rollback_retry),
        None if step.timeout is None else step.timeout.total_seconds(),
        None
        if step.rate_limit is None
        else [step.rate_limit[0], step.rate_limit[1].total_seconds()],
    ]


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
        rate_key: with ``rate_limit``, the limit holds per key of the run's input
            (``lambda order: order.customer_id``): each key has its own window, so one busy
            customer never slows the others down.
    """

    name: str
    retry: RetryPolicy | None = field(default=None, kw_only=True)
    timeout: timedelta | None = field(default=None, kw_only=True)
    output: type[BaseModel] | None = field(default=None, kw_only=True)
    rollback_retry: RetryPolicy | None = field(default=None, kw_only=True)
    rate_limit: tuple[int, timedelta] | None = field(default=None, kw_only=True)
    rate_key: Callable[[Any], str] | None = field(default=None, kw_only=True, compare=False)

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
        if self.rate_key is not None and (self.rate_limit is None or not callable(self.rate_key)):
            raise InvalidDefinitionError(
                f"step {self.name!r}: rate_key must be a function, given with a rate_limit"
            )


@dataclass(frozen=True)
class Wait(Step):
    """A step that parks the run until a signal of the same name arrives.

    The run holds no worker slot while it waits. The signal's validated payload becomes
    ``ctx.results[name]`` (an instance of ``data`` when given). A signal sent before the run
    reaches the wait is kept and consumed when it does.

    Args:
        name: the wait's (and the signal's) name, unique among the workflow's steps.
        data: the pydantic model a signal's payload is validated into (``None``: any JSON).
        timeout: how long to wait once the wait is reached (``None``: only the run's
            deadline bounds it).
        on_timeout: ``"fail"`` (the run fails with :class:`WaitTimeoutError` and its
            completed steps are compensated) or ``"continue"`` (the result is ``None``).
    """

    data: type[BaseModel] | None = field(default=None, kw_only=True)
    on_timeout: Literal["fail", "continue"] = field(default="fail", kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.on_timeout not in ("fail", "continue"):
            raise InvalidDefinitionError(
                f"wait {self.name!r}: on_timeout must be 'fail' or 'continue'"
            )
        if self.data is not None and not (
            isinstance(self.data, type) and issubclass(self.data, BaseModel)
        ):
            raise InvalidDefinitionError(f"wait {self.name!r}: data must be a pydantic model")
        if self.output is None and self.data is not None:
            object.__setattr__(self, "output", self.data)


@dataclass(frozen=True)
class Sleep(Step):
    """A step that parks the run for ``duration``, or until the time ``until`` returns.

    The sleep is durable: it is kept in Redis (on Redis's clock), not in a worker, so it
    survives the restart of every worker process. Its result is ``None``.

    Args:
        name: the sleep's name, unique among the workflow's steps.
        duration: how long to sleep once the sleep is reached.
        until: a function of the run's :class:`WorkflowContext` (its input and the results of
            earlier steps) that returns the aware ``datetime`` to sleep until; a time in the
            past does not sleep.
    """

    duration: timedelta | None = field(default=None, kw_only=True)
    until: Callable[[WorkflowContext[Any]], datetime] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.duration is None) == (self.until is None):
            raise InvalidDefinitionError(
                f"sleep {self.name!r}: give exactly one of duration and until"
            )
        if self.duration is not None and self.duration < timedelta(0):
            raise InvalidDefinitionError(f"sleep {self.name!r}: duration must not be negative")


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
        version: the definition's version, recorded on every run it executes and announced
            by every instance consuming it (default: a stable hash of the plan and the step
            options, so a change of either is a new version). Runs keep the plan and step
            options of the version that executed them, whichever version runs an attempt.
        concurrency_key: the run's concurrency key from its input (``lambda order:
            order.customer_id``): at most ``per_key_limit`` runs of one key are live at once
            across all instances; ``execute(concurrency_key=...)`` gives it per call instead.
        per_key_limit: runs of one concurrency key live at once (default 1).
        per_key_strategy: what a run that finds its key's runs all live does: ``queue``
            (default: it waits, PENDING, and starts when one ends, oldest first per key),
            ``cancel_running`` (the oldest live run of the key is cancelled, which
            compensates it, and the new run starts once it ended) or ``reject_new``
            (``execute`` raises :class:`ConcurrencyKeyBusyError`, nothing is written).
        indexed_meta: meta fields whose values the provider indexes, so that runs can be
            listed by them (``list_runs(meta={"customer": "c-7"})``) without scanning; each
            index entry costs a few writes at ``execute``, and none is written for a
            workflow that indexes no field (the default). Names match
            ``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}``.
    """

    __slots__ = (
        "_version",
        "concurrency",
        "concurrency_key",
        "groups",
        "indexed_meta",
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
        version: str | None = None,
        concurrency_key: Callable[[InputT], str] | None = None,
        per_key_limit: int = 1,
        per_key_strategy: PerKeyStrategy = "queue",
        indexed_meta: Sequence[str] = (),
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
        version: str | None = None,
        concurrency_key: Callable[[InputT], str] | None = None,
        per_key_limit: int = 1,
        per_key_strategy: PerKeyStrategy = "queue",
        indexed_meta: Sequence[str] = (),
        _groups: tuple[tuple[Step, ...], ...] = (),
    ) -> None: ...

    def __init__(
        self,
        name: str,
        *,
        input: type[InputT],
        output: type[OutputT] | None = None,
        concurrency: int | None = None,
        version: str | None = None,
        concurrency_key: Callable[[InputT], str] | None = None,
        per_key_limit: int = 1,
        per_key_strategy: PerKeyStrategy = "queue",
        indexed_meta: Sequence[str] = (),
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
        if version is not None and (not isinstance(version, str) or not VERSION.match(version)):
            raise InvalidDefinitionError(
                f"workflow {name!r}: invalid version {version!r}: must match {VERSION.pattern}"
            )
        if not isinstance(per_key_limit, int) or per_key_limit < 1:
            raise InvalidDefinitionError(f"workflow {name!r}: per_key_limit must be >= 1")
        if per_key_strategy not in PER_KEY_STRATEGIES:
            raise InvalidDefinitionError(
                f"workflow {name!r}: per_key_strategy must be one of {PER_KEY_STRATEGIES}"
            )
        if concurrency_key is not None and not callable(concurrency_key):
            raise InvalidDefinitionError(f"workflow {name!r}: concurrency_key must be callable")
        fields = _indexed_fields(name, indexed_meta)
        self.name = name
        self.input: type[InputT] = input
        self.output: type[OutputT] | None = output
        self.concurrency = concurrency
        self._version = version
        self.concurrency_key = concurrency_key
        self.per_key_limit = per_key_limit
        self.per_key_strategy: PerKeyStrategy = per_key_strategy
        self.indexed_meta: tuple[str, ...] = fields
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
        rate_key: Callable[[InputT], str] | None = None,
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
                rate_key=rate_key,
            )
        return self._extend((step,))

    def wait(
        self,
        name: str,
        *,
        data: type[BaseModel] | None = None,
        timeout: timedelta | None = None,
        on_timeout: Literal["fail", "continue"] = "fail",
    ) -> Workflow[InputT, OutputT]:
        """Return a new definition that then waits for the signal ``name`` (see :class:`Wait`).

        ``Workflow(...).wait("approval", data=Approval, timeout=timedelta(days=2))``
        """
        return self._extend((Wait(name, data=data, timeout=timeout, on_timeout=on_timeout),))

    def sleep(
        self,
        name: str,
        duration: timedelta | None = None,
        *,
        until: Callable[[WorkflowContext[Any]], datetime] | None = None,
    ) -> Workflow[InputT, OutputT]:
        """Return a new definition that then sleeps durably (see :class:`Sleep`).

        ``.sleep("cool-off", timedelta(hours=1))`` or
        ``.sleep("ship", until=lambda ctx: ctx.input.ship_at)``
        """
        return self._extend((Sleep(name, duration=duration, until=until),))

    def parallel(self, *steps: str | Step) -> Workflow[InputT, OutputT]:
        """Return a new definition with a group of two or more steps run concurrently."""
        if len(steps) < 2:
            raise InvalidDefinitionError(
                f"workflow {self.name!r}: parallel() needs at least two steps"
            )
        if any(isinstance(s, Wait | Sleep) for s in steps):
            raise InvalidDefinitionError(
                f"workflow {self.name!r}: waits and sleeps are sequential, not parallel()"
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
            version=self._version,
            concurrency_key=self.concurrency_key,
            per_key_limit=self.per_key_limit,
            per_key_strategy=self.per_key_strategy,
            indexed_meta=self.indexed_meta,
            _groups=(*self.groups, group),
        )
        return extended

    @property
    def version(self) -> str:
        """The version given to the constructor, or a stable hash of the plan and the step
        options (12 hex digits): the same on every instance that defines the same workflow."""
        if self._version is not None:
            return self._version
        text = json.dumps([[_step_options(step) for step in group] for group in self.groups])
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def steps(self) -> tuple[Step, ...]:
        """Every step, in definition order."""
        return tuple(step for group in self.groups for step in group)

    @property
    def parks(self) -> tuple[Wait | Sleep, ...]:
        """The waits and sleeps, in definition order."""
        return tuple(step for step in self.steps if isinstance(step, Wait | Sleep))

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def get_step(self, name: str) -> Step:
        """The step called ``name``; ``KeyError`` when there is none."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


def _indexed_fields(workflow: str, fields: object) -> tuple[str, ...]:
    """``Workflow(indexed_meta=)`` checked: distinct names matching :data:`META_FIELD`."""
    if isinstance(fields, str) or not isinstance(fields, Iterable):
        raise InvalidDefinitionError(
            f"workflow {workflow!r}: indexed_meta must be a sequence of field names"
        )
    names = tuple(fields)
    for name in names:
        if not isinstance(name, str) or not META_FIELD.match(name):
            raise InvalidDefinitionError(
                f"workflow {workflow!r}: invalid indexed_meta field {name!r}: must match"
                f" {META_FIELD.pattern}"
            )
    if len(set(names)) != len(names):
        raise InvalidDefinitionError(f"workflow {workflow!r}: indexed_meta lists a field twice")
    return names
