"""The ``plait`` command line: ``main`` parses, ``commands`` acts, ``output`` prints."""

from .main import main

__all__ = ["main"]
