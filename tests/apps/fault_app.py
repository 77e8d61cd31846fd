"""A worker application with faults on demand, run with ``plait worker apps.fault_app:providers``.

Configured by environment: ``PLAIT_URL``, ``PLAIT_PREFIX``, ``PLAIT_ID`` (as ``workflow_app``),
``PLAIT_SLEEP`` (seconds each attempt of the sync ``nap`` step blocks its thread) and
``PLAIT_FAULT=heartbeat`` (the heartbeat loop is replaced by one that dies half a second after
the provider started, the way a loop without a guard would). Its provider runs ``chain`` (as
``workflow_app``) and ``napping``; ``shutdown_timeout`` is one second.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import anyio
from apps.definitions import Job, chain

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import StepContext, Workflow, WorkflowConsumer

napping: Workflow[Job, Any] = Workflow("napping", input=Job).step("nap")


def nap(ctx: StepContext[Job]) -> str:
    """A sync step: blocks a thread, which a cancellation cannot stop."""
    time.sleep(float(os.environ.get("PLAIT_SLEEP", "30")))
    return "rested"


async def _dying_heartbeat() -> None:
    await anyio.sleep(0.5)
    raise RuntimeError("injected fault: the heartbeat loop died")


def providers() -> list[Any]:
    provider = RedisWorkflowProvider.from_url(
        os.environ.get("PLAIT_URL", "redis://127.0.0.1:6379/0"),
        prefix=os.environ.get("PLAIT_PREFIX", "plait-test"),
        provider_id=os.environ.get("PLAIT_ID", f"faulty-{os.getpid()}"),
        stall_timeout=timedelta(seconds=1),
        shutdown_timeout=timedelta(seconds=1),
    )
    chains: WorkflowConsumer[Job, Any] = WorkflowConsumer(chain)
    for name in ("s1", "s2", "s3"):
        chains.step(name)(lambda ctx: ctx.step)
    naps: WorkflowConsumer[Job, Any] = WorkflowConsumer(napping)
    naps.step("nap")(nap)
    provider.register(chains)
    provider.register(naps)
    if os.environ.get("PLAIT_FAULT") == "heartbeat":
        provider._heartbeat.serve = _dying_heartbeat  # type: ignore[method-assign]
    return [provider]
