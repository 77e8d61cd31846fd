"""The Redis engine of plait: workflow and event providers on Redis or the embedded ``memory://``.

Connect with a URL (``redis://``, ``rediss://``, ``unix://`` or ``memory://``) or inject an existing
``redis.asyncio.Redis``; the providers run the same Lua scripts on both.
"""

import logging

from ._event_provider import RedisEventProvider
from ._health import GroupHealth, Health, InstanceHealth, QueueHealth, health_app
from ._timers import ReconcileStats
from ._workflow_provider import RedisWorkflowProvider

# A library logs, the application decides where it goes.
logging.getLogger("plait").addHandler(logging.NullHandler())

__all__ = [
    "GroupHealth",
    "Health",
    "InstanceHealth",
    "QueueHealth",
    "ReconcileStats",
    "RedisEventProvider",
    "RedisWorkflowProvider",
    "health_app",
]
