"""``FlameInstanceServicer`` and ``FlameInstanceServer``: Flame's names for serving a ``FlameService``.

Code written against Flame's SDK builds its own gRPC server with ``FlameInstanceServicer(service)`` or
starts one with ``FlameInstanceServer(service).start()``. Both run the same callbacks as
:func:`flamepy_core.instance.runtime.run` (one at a time, errors turned into ``return_code`` -1 with the
exception's text), so a service behaves the same whichever way it is served.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from flamepy_core.config import normalize_endpoint
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import DeferredHandler, Handler, Server, UnaryHandler
from flamepy_core.instance.runtime import ENDPOINT_ENV, instance_handlers
from flamepy_core.instance.service import FlameService
from flamepy_core.plugins import get_registry
from flamepy_core.transport_kit import SimpleCallContext, adapt_handlers, blocking_unary
from flamepy_core.wire.methods import INSTANCE
from flamepy_core.wire.proto import shim_pb2
from flamepy_core.wire.proto import types_pb2 as pb

__all__ = ["FlameInstanceServer", "FlameInstanceServicer"]


def _unary(handler: Handler) -> UnaryHandler:
    if isinstance(handler, DeferredHandler):
        return blocking_unary(handler)
    assert isinstance(handler, UnaryHandler)
    return handler


class FlameInstanceServicer:
    """The ``flame.v1.Instance`` servicer of a ``FlameService``, with the generated servicer's method names.

    Register it on a ``grpc.Server`` with ``flamepy.proto.shim_pb2_grpc.add_InstanceServicer_to_server``.
    """

    def __init__(self, service: FlameService) -> None:
        self.service = service
        self._handlers = {path: _unary(h) for path, h in instance_handlers(service).items()}

    def _call(self, rpc: str, request: Any) -> bytes:
        method = INSTANCE[rpc]
        return self._handlers[method.path].fn(request.SerializeToString(), SimpleCallContext(method.path, None))

    def OnSessionEnter(self, request: shim_pb2.SessionContext, context: Any = None) -> pb.Result:
        return pb.Result.FromString(self._call("OnSessionEnter", request))

    def OnTaskInvoke(self, request: shim_pb2.TaskContext, context: Any = None) -> pb.TaskResult:
        return pb.TaskResult.FromString(self._call("OnTaskInvoke", request))

    def OnSessionLeave(self, request: pb.EmptyRequest, context: Any = None) -> pb.Result:
        return pb.Result.FromString(self._call("OnSessionLeave", request))


class FlameInstanceServer:
    """Serves a ``FlameService`` on ``FLAME_INSTANCE_ENDPOINT`` (or ``endpoint``) until :meth:`stop`.

    A bare path is served by the transport that speaks Flame's protocol on one (``bare_path_scheme``:
    gRPC on that unix socket), as Flame's executors expect; a URL picks its transport by scheme. Unlike
    :func:`flamepy.run` it does not block: :meth:`start` returns once the
    server listens.
    """

    def __init__(self, service: FlameService, endpoint: str | None = None) -> None:
        self.service = service
        self.endpoint = endpoint
        self._server: Server | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._server is not None:
                return
            raw = self.endpoint or os.environ.get(ENDPOINT_ENV)
            if not raw:
                raise FlameError(
                    FlameErrorCode.INVALID_CONFIG,
                    f"Failed to start the instance server: {ENDPOINT_ENV} not found; the runtime sets it for the "
                    f"processes it starts, or pass endpoint= (a socket path or a URL)",
                )
            registry = get_registry()
            url = registry.endpoint_url(normalize_endpoint(raw))
            transport = registry.transport(url)
            self._server = transport.serve(url, adapt_handlers(instance_handlers(self.service), transport.capabilities))

    @property
    def bound_endpoint(self) -> str | None:
        """Where the server listens (ports resolved), or None before :meth:`start`."""
        return self._server.endpoint if self._server is not None else None

    def stop(self, grace: float = 1.0) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.stop(grace=grace)
