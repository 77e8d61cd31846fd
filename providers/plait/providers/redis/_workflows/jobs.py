"""Job names: what a stream entry asks a consumer to run.

A job is a step (its own name), the rollback of a step (``~rb:<step>``), ``on_complete``
(``~complete``) or ``on_error`` (``~error``). Step names start with a letter or digit, so a
leading ``~`` always marks one of the others. The Lua scripts write the same names; this module
is the only Python code that takes them apart.
"""

from __future__ import annotations

COMPLETE = "~complete"
"""The job of the consumer's ``on_complete`` hook."""
ERROR = "~error"
"""The job of the consumer's ``on_error`` hook."""
ROLLBACK = "~rb:"
"""The prefix of a rollback job; the step it rolls back follows."""


def rollback_of(job: str) -> str | None:
    """The step whose rollback ``job`` is, or None when ``job`` is no rollback."""
    return job[len(ROLLBACK) :] if job.startswith(ROLLBACK) else None


def step_of(job: str) -> str:
    """The step whose options (retry, timeout) apply to ``job``: a step itself, a rollback's
    step; a hook's own job name, which no step has."""
    return job[len(ROLLBACK) :] if job.startswith(ROLLBACK) else job


def is_step(job: str) -> bool:
    """Whether ``job`` runs a step (not its rollback, not a hook)."""
    return not job.startswith("~")


def compensates(job: str) -> bool:
    """Whether ``job`` is part of a run's compensation: a rollback or ``on_error``."""
    return job == ERROR or job.startswith(ROLLBACK)


def display_name(job: str) -> str:
    """The user-facing name of a job (``on_complete``, ``on_error``, ``rollback:<step>``)."""
    if job == COMPLETE:
        return "on_complete"
    if job == ERROR:
        return "on_error"
    if job.startswith(ROLLBACK):
        return "rollback:" + job[len(ROLLBACK) :]
    return job


def error_step_name(job: str) -> str:
    """The ``step`` an error of this job names (a rollback error names its step)."""
    if job.startswith(ROLLBACK):
        return job[len(ROLLBACK) :]
    return display_name(job)
