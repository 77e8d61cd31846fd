"""The Redis engine of plait: workflow and event providers on Redis or the embedded ``memory://``.

Connect with a URL (``redis://``, ``rediss://``, ``unix://`` or ``memory://``) or inject an existing
``redis.asyncio.Redis``; the providers run the same Lua scripts on both.
"""

import logging

from ._event_provider import RedisEventProvider
from ._workflow_provider import RedisWorkflowProvider

# A library logs, the application decides where it goes.
logging.getLogger("plait").addHandler(logging.NullHandler())

__all__ = ["RedisEventProvider", "RedisWorkflowProvider"]
