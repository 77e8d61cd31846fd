"""``RetryPolicy.next_delay``: the one retry decision of steps, hooks, rollbacks and events."""

from __future__ import annotations

from datetime import timedelta

from plait.workflows import NonRetryableError, RetryPolicy

POLICY = RetryPolicy(
    max_attempts=4,
    initial_interval=timedelta(seconds=1),
    backoff=3.0,
    max_interval=timedelta(seconds=5),
)


def test_the_delay_grows_by_the_backoff_up_to_the_max_interval() -> None:
    delays = [POLICY.next_delay(attempt, RuntimeError("boom")) for attempt in (1, 2, 3)]
    assert delays == [timedelta(seconds=1), timedelta(seconds=3), timedelta(seconds=5)]


def test_the_last_attempt_has_no_next_delay() -> None:
    assert POLICY.next_delay(4, RuntimeError("boom")) is None
    assert POLICY.next_delay(5, RuntimeError("boom")) is None


def test_a_single_attempt_policy_never_retries() -> None:
    assert RetryPolicy(max_attempts=1).next_delay(1, RuntimeError("boom")) is None


def test_a_non_retryable_error_has_no_next_delay() -> None:
    listed = RetryPolicy(non_retryable=(KeyError, "builtins.LookupError"))
    assert POLICY.next_delay(1, NonRetryableError("declined")) is None
    assert listed.next_delay(1, KeyError("listed")) is None
    assert listed.next_delay(1, IndexError("a LookupError, listed by name")) is None
    assert listed.next_delay(1, ValueError("not listed")) == timedelta(seconds=1)


def test_next_delay_agrees_with_delay_and_is_retryable() -> None:
    error = RuntimeError("boom")
    for attempt in range(1, POLICY.max_attempts):
        assert POLICY.next_delay(attempt, error) == POLICY.delay(attempt)
