"""Which serializer a client session uses: asked of the server once per application, then remembered.

Precedence: explicit ``Session(serializer=...)`` > the serializer the application was registered with
(its ``FLAME_SERIALIZER`` environment entry) > the configuration (``FLAME_SERIALIZER``, then
``flame.yaml``) > ``cloudpickle``. The codec itself (:mod:`flamepy_core.serialization`) makes no call;
this module is the client half of the rule because it needs the server.
"""

from __future__ import annotations

import threading

from flamepy_core.client.connection import default_connection
from flamepy_core.config import ENV_SERIALIZER, resolve_config
from flamepy_core.contracts.serializer import Serializer
from flamepy_core.plugins import get_registry

__all__ = ["application_serializer", "forget_application_serializers", "session_serializer"]

_apps_lock = threading.Lock()
_app_serializers: dict[tuple[str, str], str | None] = {}


def application_serializer(application: str) -> str | None:
    """The serializer ``application`` was registered with (its ``FLAME_SERIALIZER``), or None.

    Asked once per application and server for the life of the process. An application that is not
    registered is not remembered, so registering it later is seen; the session's creation then reports
    the missing application as before.
    """
    conn = default_connection()
    key = (conn.addr, application)
    with _apps_lock:
        if key in _app_serializers:
            return _app_serializers[key]
    app = conn.get_application(application)
    if app is None:
        return None
    name = ((app.environments or {}).get(ENV_SERIALIZER) or "").strip() or None
    with _apps_lock:
        _app_serializers[key] = name
    return name


def forget_application_serializers() -> None:
    """Drop what :func:`application_serializer` remembered (after re-registering an application)."""
    with _apps_lock:
        _app_serializers.clear()


def session_serializer(explicit: str | None, application: str) -> tuple[Serializer, str]:
    """``(serializer, where it came from)`` for a session of ``application``.

    Precedence: ``explicit`` > the application's registered serializer > configuration > default.
    """
    if explicit is not None:
        name, origin = explicit, "argument"
    else:
        registered = application_serializer(application)
        if registered is not None:
            name, origin = registered, f"the registration of application {application}"
        else:
            config = resolve_config()
            name, origin = config.serializer, config.source.get("serializer", "default")
    return get_registry().serializer(name), origin
