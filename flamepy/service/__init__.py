"""``flamepy.service``: typed services (``FlameInstance``) and their clients (``Session``)."""

from flamepy.service.client import Session
from flamepy.service.instance import EntrypointError, FlameInstance

__all__ = ["EntrypointError", "FlameInstance", "Session"]
