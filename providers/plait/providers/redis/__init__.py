"""The Redis engine of plait: workflow and event providers on Redis or the embedded ``memory://``.

Connect with a URL (``redis://``, ``rediss://``, ``unix://`` or ``memory://``) or inject an existing
``redis.asyncio.Redis``; the providers run the same Lua scripts on both.
"""

from ._workflow_provider import RedisWorkflowProvider

__all__ = ["RedisWorkflowProvider"]
