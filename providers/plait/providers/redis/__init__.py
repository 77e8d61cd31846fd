"""The Redis engine of plait: workflow and event providers on Redis or the embedded ``memory://``.

Connect with a URL (``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://`` or
``memory://``) or inject an existing ``redis.asyncio.Redis``; the providers run the same Lua
scripts on both.

General layout
--------------

The two engines have the same shape (provider, options, caller side, worker, one job, scripts,
codec) and never import each other; both stand on ``_core``::

    _core/          what both engines stand on
      connection.py   Connection, connect(url), wrap(client)
      memory.py       the memory:// embedded servers: registry, clocks, in-process wake-ups
      direct.py       transition scripts sent straight on connections of their own
      errors.py       redis-py errors translated at one boundary (translated, ErrorKinds)
      retry.py        call_until (callers: until connect_timeout), call_forever (workers)
      watchdog.py     deadlines on every reply, the stall / round-trip check
      wire.py         bytes to text, default provider ids
      payload.py      what can be stored: JSON depth, valid Unicode, meta
      codecs.py       payload codecs (encryption, compression) and their framing as text
      keys.py         the whole key schema, one hash tag per workflow / event
      lua.py          loading lua/*.lua with their shared library
      calls.py        calling a user handler (async, or sync in a worker thread)
      supervisor.py   a provider's background work from start() to stop()
      notify.py       pub/sub notifications (run ends, cancellations, replies)
      tracing.py      trace and correlation ids carried in meta
      telemetry.py    OpenTelemetry spans and metrics
      server.py       the Redis settings that may lose data (eviction, persistence)
      schedules.py    schedules as stored: specs, ticks (cron via cronsim), list/pause/resume
      scheduler.py    the loop that fires due ticks, each once, with no leader
    _workflows/     the workflow engine
      provider.py     RedisWorkflowProvider: register, execute, signal, retry, reconcile, readiness,
                      health (the public face: each method delegates to the modules below)
      options.py      WorkflowProviderOptions
      lifecycle.py    a started provider's background work and workers, from start() to stop()
      submission.py   an execute's arguments checked, then its one script call
      directory.py    finding runs and acting on them: handles, retry, list/find/retry/cancel_runs
      runs.py         the caller side: status, result, cancel, describe, watch
      search.py       finding runs through the status, meta and runs indexes, paged by cursor
      worker.py       intake: read, reclaim, start in batches, hold and release entries
      intake.py       idle workflows: parked on wake-ups, one sweep for all
      attempt.py      running one attempt and recording its outcome
      handlers.py     a consumer's handlers: contexts, policies, calls, results
      jobs.py         job names: steps, rollbacks, on_complete, on_error
      lease.py        lease renewal from a thread
      release.py      handing work back: what a stopping worker will not finish
      capabilities.py what each instance can run (announced), each run needs (pinned)
      timers.py       retries due and deadlines passed
      reconciler.py   repairing runs that cannot advance by themselves
      waits.py        waits and sleeps parked, signals delivered
      schedules.py    workflow schedules: stored specs, firing (each tick one execute), scheduler
      flow.py         an execute's per-key concurrency and debounce options
      scripts.py      RunScripts: typed calls of lua/run_*.lua
      codec.py        runs as stored: JSON, plans, records, errors
    _events/        the event engine
      provider.py     RedisEventProvider: on, emit, request, cancel, trim, readiness, health
      options.py      EventProviderOptions
      publisher.py    the caller side: emit and request
      worker.py       intake: readers, timers, leases, reclaim
      delivery.py     running one delivery and recording its outcome
      scripts.py      EventScripts: typed calls of lua/event_*.lua
      codec.py        events as stored: entries, replies
      schedules.py    firing event schedules: each tick one emit
    _ops/           operating a deployment
      health.py       readiness and the backlog report
      heartbeat.py    per-instance heartbeats
      asgi.py         health_app
      dead_letters.py listing, replaying and purging dead letters
      web.py          http_status (errors to HTTP), lifespan (ASGI apps)
      catalog.py      the registry of workflow and event names under a prefix
    _dashboard/     the web dashboard (plait dashboard; the plait[dashboard] extra)
      app.py          the starlette app: routes, live updates (SSE), actions and their token
      queries.py      runs paged through the indexes, counts, event groups
      pages.py        the HTML, every value escaped
    _cli/           the plait command (python -m plait.providers.redis)
      main.py         arguments, dispatch, exit codes
      worker.py       plait worker: load, check flags, banner, run until a signal
      dashboard.py    plait dashboard: check the extra and flags, serve with uvicorn
      commands.py     runs, events, dead-letters, reconcile, health, registry
      runs.py         runs list and the bulk runs retry|cancel: filters served by the indexes
      schedules.py    schedules list, show, pause, resume, delete
      output.py       tables, times, JSON
    lua/            one script per transition, run_lib.lua / event_lib.lua shared by them
"""

import logging
from importlib import metadata

from ._core.codecs import CodecChain, FernetCodec, PayloadCodec, ZlibCodec
from ._core.schedules import ScheduleInfo, Schedules
from ._events.options import EventProviderOptions
from ._events.provider import RedisEventProvider
from ._ops.asgi import health_app
from ._ops.health import GroupHealth, Health, InstanceHealth, QueueHealth, Readiness
from ._ops.web import http_status, lifespan
from ._workflows.options import WorkflowProviderOptions
from ._workflows.provider import RedisWorkflowProvider
from ._workflows.reconciler import ReconcileStats

# A library logs, the application decides where it goes.
logging.getLogger("plait").addHandler(logging.NullHandler())

__version__ = metadata.version("plait")
"""The installed version of plait (from the package metadata)."""

__all__ = [
    "CodecChain",
    "EventProviderOptions",
    "FernetCodec",
    "GroupHealth",
    "Health",
    "InstanceHealth",
    "PayloadCodec",
    "QueueHealth",
    "Readiness",
    "ReconcileStats",
    "RedisEventProvider",
    "RedisWorkflowProvider",
    "ScheduleInfo",
    "Schedules",
    "WorkflowProviderOptions",
    "ZlibCodec",
    "health_app",
    "http_status",
    "lifespan",
]
