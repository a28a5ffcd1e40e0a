"""``flamepy.testing``: unit-test a service with the whole runtime inside the test's process.

::

    from flamepy.service import Session
    from flamepy.testing import local_runtime

    def test_echo():
        with local_runtime() as runtime:
            runtime.register("echo-app", "path/to/echo_service.py")
            with Session("echo-app", ctx=[]) as session:
                assert session.invoke(EchoRequest("hi")).count == 1

:func:`local_runtime` starts the same engine the ``inmem://`` endpoint runs, points this process's
default connection at it, and (by default) runs each instance *in-process*: the service file is loaded
into the test's interpreter instead of being started as a process (see
:mod:`flamepy_core.engine.inprocess` for what that shares with the test). The sessions, tasks, session
context and object cache behave as on a real server, so the test exercises the service as clients see
it, in milliseconds, with breakpoints and coverage working in the service's code.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flamepy_core.client.api import register_application, unregister_application
from flamepy_core.client.connection import reset_default_connection
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.embedded import INSTANCE_MODE_ENV, ensure_inprocess_server, stop_inprocess_server
from flamepy_core.engine.inprocess import INSTANCE_MODES
from flamepy_core.engine.server import FlameServer
from flamepy_core.model import ApplicationAttributes
from flamepy_core.plugins import get_registry

__all__ = ["LocalRuntime", "local_runtime"]

_ENV_CLEARED = ("FLAME_ENDPOINT", "FLAME_CACHE_ENDPOINT", "FLAME_HOME", INSTANCE_MODE_ENV)
"""Variables that would point the default connection (or the cache client) elsewhere; restored after."""


class LocalRuntime:
    """The runtime :func:`local_runtime` started: register services on it; clients reach it by default."""

    def __init__(self, server: FlameServer, endpoint: str, home: Path) -> None:
        self.server = server
        self.endpoint = endpoint
        self.home = home

    def register(self, name: str, service: str | os.PathLike[str], **attrs: Any) -> None:
        """Register application ``name`` served by ``service``: a ``.py`` file, or a folder holding one.

        A folder must hold exactly one ``*service*.py`` file (e.g. ``echo_service.py``); otherwise pass
        the file. ``attrs`` are further application attributes (``environments``, ``max_instances``,
        ``delay_release``...) and override the defaults (this interpreter as ``command``, the file as
        ``arguments``, its folder as ``working_directory``).
        """
        path = _service_path(Path(service))
        spec: dict[str, Any] = {
            "command": sys.executable,
            "arguments": [path.name],
            "working_directory": str(path.parent),
        }
        spec.update(attrs)
        register_application(name, ApplicationAttributes.from_dict(spec))

    def unregister(self, name: str) -> None:
        """Remove application ``name`` (its sessions must be closed)."""
        unregister_application(name)


def _service_path(service: Path) -> Path:
    service = service.expanduser().resolve()
    if service.is_file():
        return service
    if service.is_dir():
        candidates = sorted(p for p in service.glob("*.py") if "service" in p.stem)
        if len(candidates) == 1:
            return candidates[0]
        found = ", ".join(p.name for p in candidates) or "none"
        raise ValueError(
            f"{service} is a folder with {len(candidates)} *service*.py files ({found}); "
            f"pass the service file itself, e.g. register(name, '{service}/my_service.py')"
        )
    raise FileNotFoundError(f"no service file or folder at {service}")


@contextlib.contextmanager
def local_runtime(
    home: str | os.PathLike[str] | None = None, *, instances: str = "inprocess"
) -> Iterator[LocalRuntime]:
    """A private in-process runtime for the ``with`` block; this process's clients use it meanwhile.

    ``home`` holds its database (default: a temporary folder, removed afterwards). ``instances`` is
    ``"inprocess"`` (service files loaded into this process: no process is started) or ``"process"``
    (instances are real processes, as with ``FLAME_ENDPOINT=inmem://...``). Runtime timings come from the
    ``FLAME_*`` settings in the environment (e.g. ``FLAME_DELAY_RELEASE``). On exit the runtime is
    stopped and the environment and default connection are as they were.
    """
    if instances not in INSTANCE_MODES:
        raise FlameError(
            FlameErrorCode.INVALID_CONFIG,
            f"local_runtime(instances={instances!r}): choose one of {', '.join(INSTANCE_MODES)}",
        )
    own_home = home is None
    root = Path(tempfile.mkdtemp(prefix="flamepy-test-")) if home is None else Path(home).expanduser().resolve()
    endpoint = get_registry().in_process_endpoint(root, f"flamepy-testing-{uuid.uuid4().hex[:12]}")
    saved = {name: os.environ.get(name) for name in _ENV_CLEARED}
    try:
        for name in _ENV_CLEARED:
            os.environ.pop(name, None)
        os.environ["FLAME_ENDPOINT"] = endpoint
        os.environ["FLAME_HOME"] = str(root)
        reset_default_connection()
        server = ensure_inprocess_server(endpoint, root, instance_mode=instances)
        yield LocalRuntime(server, endpoint, root)
    finally:
        reset_default_connection()
        stop_inprocess_server(endpoint)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_default_connection()
        if own_home:
            shutil.rmtree(root, ignore_errors=True)
