"""Every example runs on a fresh machine (``memory://``) and shows what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

#: What each example must print, so a silently broken demo fails here.
EXPECTED = {
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
