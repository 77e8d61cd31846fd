"""Every example runs on a fresh machine (``memory://``) and shows what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

#: What each example must print, so a silently broken demo fails here.
EXPECTED = {
    # the series names depend on the exporter's version (units and suffixes), not their stems
    "prometheus_metrics.py": ["plait_runs_started", 'plait_status="COMPLETED"', "plait_step_dur"],
    "quickstart.py": ["order 42: COMPLETED", "released R-43", "order 43: FAILED"],
    "order_payment.py": [
        "paid by ch_42, shipped",
        "rollback: released R-43",
        "WaitTimeoutError for wait 'payment'",
        "the late payment is refused",
    ],
    "order_saga.py": ["COMPLETED", "FAILED", "rollback: released R-43", "created=False"],
    "events_fanout.py": ["billing :", "shipping:", "quote for tea"],
    "flow_control.py": ["one run for the burst: True", "reindex doc-7 with 'draft 9'"],
    "schedules.py": ["each once: True", "nightly-report next fires at", "'nightly-report', 'tick'"],
    "tracing.py": ["span tree:", "execute book-trip  [PRODUCER", "(linked to attempt 1)"],
}


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_runs(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for text in EXPECTED.get(script, []):
        assert text in done.stdout


@pytest.mark.timeout(180)
def test_the_multi_instance_example_runs_every_service_against_redis() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "multi_instance" / "run.py")],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "invalid order: HTTP 422 InvalidInputError" in lines
    assert "unknown run: HTTP 404 RunNotFoundError" in lines
    orders = [line for line in lines if line.startswith("order ")]
    assert len(orders) == 6
    assert all("created once, then attached" in line for line in orders)
    assert sum("COMPLETED" in line and "seen by api, worker-" in line for line in orders) == 5
    assert all(line.endswith("notifier") for line in orders if "COMPLETED" in line)
    assert "FAILED (compensated: rollback:reserve)" in orders[-1]
    assert "stream resumed after" in orders[0]
