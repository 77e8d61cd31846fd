"""The plait dashboard: a small ASGI application (starlette) showing what a prefix holds.

``plait dashboard --url ... --port ...`` serves it (see :mod:`.app`); it needs the
``plait[dashboard]`` extra (starlette and uvicorn). Nothing here is imported by the engines.
"""
