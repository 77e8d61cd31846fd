"""Retry policies for tests: the same attempts, no waiting between them."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from plait.workflows import RetryPolicy


def without_backoff(policy: RetryPolicy | None = None) -> RetryPolicy:
    """``policy`` (default: ``RetryPolicy()``) with every retry due at once.

    The attempts and the non-retryable errors stay; only the intervals become zero. Give it to
    a provider as its ``retry=`` (the policy of steps, hooks, rollbacks and handlers that declare
    none) or to a step built for the test. To see the real backoffs pass instead, keep the policy
    and move the clock (:meth:`~plait.testing.VirtualClock.advance`).

    Args:
        policy: the policy to shorten.

    Returns:
        A new policy; ``policy`` is not changed.
    """
    return replace(
        policy or RetryPolicy(), initial_interval=timedelta(0), max_interval=timedelta(0)
    )
