"""The Redis engine of plait: workflow and event providers on Redis or the embedded ``memory://``.

Connect with a URL (``redis://``, ``rediss://``, ``unix://`` or ``memory://``) or inject an existing
``redis.asyncio.Redis``; the providers run the same Lua scripts on both.
"""

import logging

from ._events.options import EventProviderOptions
from ._events.provider import RedisEventProvider
from ._ops.asgi import health_app
from ._ops.health import GroupHealth, Health, InstanceHealth, QueueHealth
from ._workflows.options import WorkflowProviderOptions
from ._workflows.provider import RedisWorkflowProvider
from ._workflows.reconciler import ReconcileStats

# A library logs, the application decides where it goes.
logging.getLogger("plait").addHandler(logging.NullHandler())

__all__ = [
    "EventProviderOptions",
    "GroupHealth",
    "Health",
    "InstanceHealth",
    "QueueHealth",
    "ReconcileStats",
    "RedisEventProvider",
    "RedisWorkflowProvider",
    "WorkflowProviderOptions",
    "health_app",
]
