"""Flame's Python surface, module by module, checked against the reference's module table.

The expected names are Flame's (``flamepy==0.6.0`` plus ``flamepy.tools`` from upstream HEAD), written
out here from the compatibility reference. Every module must import, carry every name, and — where the
reference gives an ``__all__`` — match it, with flamepy's own additions listed explicitly so that a name
appearing or vanishing by accident fails this test.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

TOP_LEVEL = {
    # type aliases
    "TaskID", "SessionID", "ApplicationID", "Message", "TaskInput", "TaskOutput", "CommonData",
    # constants
    "DEFAULT_FLAME_CONF", "DEFAULT_FLAME_ENDPOINT", "DEFAULT_FLAME_CACHE_ENDPOINT", "FLAME_INSTANCE_ENDPOINT",
    # enums and the error
    "SessionState", "TaskState", "ApplicationState", "Shim", "FlameErrorCode", "FlameError",
    # dataclasses and classes
    "Event", "ResourceRequirement", "SessionAttributes", "ApplicationSchema", "ApplicationAttributes", "Task",
    "Application", "FlamePackage", "FlameContextRunner", "TaskInformer", "FlameContext",
    # client
    "connect", "create_session", "open_session", "register_application", "unregister_application",
    "list_applications", "list_executors", "list_nodes", "get_application", "list_sessions", "get_session",
    "close_session", "Connection", "Session", "TaskWatcher",
    # service
    "ApplicationContext", "SessionContext", "TaskContext", "FlameService", "run",
    # cache
    "ObjectRef", "get_object", "put_object", "update_object",
    # submodules
    "runner", "service", "util",
}  # fmt: skip
CORE_ADDS = {
    "ConnectionInstance", "FlameInstanceServicer", "FlameInstanceServer", "short_name", "WILDCARD_SESSION",
    "ObjectKey", "patch_object", "upload_object", "download_object",
}  # fmt: skip
CORE = (TOP_LEVEL - {"runner", "service", "util"}) | CORE_ADDS
CACHE = {"ObjectRef", "delete_objects", "get_object", "patch_object", "put_object", "update_object"}
SERVICE = {"Session", "FlameInstance"}
UTIL = {"short_name"}
RUNNER = {
    "SessionContext", "ObjectFuture", "ObjectFutureIterator", "Runner", "RunnerService", "FlameRunpyService",
    "RunnerContext", "RunnerRequest", "get_data", "RunnerError", "ErrorType",
}  # fmt: skip
TOOLS = {"Sandbox", "SandboxAttr", "SandboxOutput"}

# flamepy's additions, each deliberate (documented in docs/): a name here that is not exported fails too.
OURS_TOP = {"__version__", "cache", "tools", "TaskFailedError", "update_application", "short_name"}
OURS_CORE = {"TaskFailedError", "update_application", "delete_objects"}
OURS_SERVICE = {"EntrypointError"}
OURS_UTIL = {"progress"}

ALL_LISTS = {
    "flamepy": (len(TOP_LEVEL), TOP_LEVEL, OURS_TOP),
    "flamepy.core": (61, CORE, OURS_CORE),
    "flamepy.cache": (6, CACHE, set()),
    "flamepy.service": (2, SERVICE, OURS_SERVICE),
    "flamepy.util": (1, UTIL, OURS_UTIL),
    "flamepy.runner": (11, RUNNER, set()),
    "flamepy.tools": (3, TOOLS, set()),
}

MODULE_TABLE = {
    # module: names it must carry (beyond __all__ checks above)
    "flamepy.core.cache": {"upload_object", "download_object", "put_object", "get_object", "ObjectRef"},
    "flamepy.core.client": {"connect", "Connection", "ConnectionInstance", "Session", "create_session"},
    "flamepy.core.service": {"FlameService", "FlameInstanceServicer", "FlameInstanceServer", "run"},
    "flamepy.core.types": {"FlameContext", "FlamePackage", "FlameError", "short_name", "ResourceRequirement"},
    "flamepy.proto": set(),
    "flamepy.proto.types_pb2": {"Application", "Session", "Task", "ResourceRequirement", "DESCRIPTOR"},
    "flamepy.proto.frontend_pb2": {"RegisterApplicationRequest", "CreateSessionRequest", "DESCRIPTOR"},
    "flamepy.proto.shim_pb2": {"SessionContext", "TaskContext", "ApplicationContext", "DESCRIPTOR"},
    "flamepy.proto.types_pb2_grpc": set(),
    "flamepy.proto.frontend_pb2_grpc": {"FrontendStub", "FrontendServicer", "add_FrontendServicer_to_server"},
    "flamepy.proto.shim_pb2_grpc": {"InstanceStub", "InstanceServicer", "add_InstanceServicer_to_server"},
    "flamepy.runner.runner": {"Runner", "RunnerService", "ObjectFuture", "ObjectRef", "get_object"},
    "flamepy.runner.types": {"RunnerContext", "RunnerRequest", "SessionContext"},
    "flamepy.runner.helper": {"get_data", "RunnerError", "ErrorType"},
    "flamepy.runner.storage": {
        "StorageBackend",
        "FileStorage",
        "HttpStorage",
        "CacheStorage",
        "create_storage_backend",
    },
    "flamepy.runner.runpy": {"FlameRunpyService", "main"},
    "flamepy.runner.e2e": {"run_runner_e2e", "RunnerE2EResult", "main"},
    "flamepy.tools.sandbox": {"Sandbox", "SandboxAttr", "SandboxOutput", "create_session", "open_session"},
}


@pytest.mark.parametrize("module", sorted(ALL_LISTS))
def test_all_matches_the_reference(module: str) -> None:
    size, expected, ours = ALL_LISTS[module]
    mod = importlib.import_module(module)
    exported = set(mod.__all__)
    assert expected - exported == set(), f"{module} lacks Flame's names"
    assert exported - expected == ours, f"{module} exports names that are neither Flame's nor listed"
    assert len(expected) == size
    for name in exported:
        assert getattr(mod, name) is not None, f"{module}.{name}"


@pytest.mark.parametrize("module", sorted(MODULE_TABLE))
def test_module_table(module: str) -> None:
    mod = importlib.import_module(module)
    missing = {name for name in MODULE_TABLE[module] if not hasattr(mod, name)}
    assert missing == set(), f"{module} lacks {sorted(missing)}"


def test_tools_exposes_nothing_else() -> None:
    tools = importlib.import_module("flamepy.tools")
    assert tools.__all__ == ["Sandbox", "SandboxAttr", "SandboxOutput"]
    for hidden in ("Session", "create_session", "ResourceRequirement", "FlameError", "Script", "flmexec"):
        assert not hasattr(tools, hidden), hidden


def test_proto_modules_are_the_runtime_messages() -> None:
    from flamepy.proto import frontend_pb2, shim_pb2, types_pb2
    from flamepy_core.wire.proto import frontend_pb2 as ours_frontend
    from flamepy_core.wire.proto import shim_pb2 as ours_shim
    from flamepy_core.wire.proto import types_pb2 as ours_types

    assert types_pb2.Application is ours_types.Application
    assert frontend_pb2.DESCRIPTOR is ours_frontend.DESCRIPTOR
    assert shim_pb2.TaskContext is ours_shim.TaskContext
    assert types_pb2.Application.DESCRIPTOR.full_name == "flame.v1.Application"


def test_importing_flamepy_stays_cheap() -> None:
    """``import flamepy`` loads none of the lazily imported submodules (nor grpc through them)."""
    code = (
        "import sys, flamepy\n"
        "loaded = sorted(m for m in ('flamepy.runner', 'flamepy.tools', 'flamepy.proto') if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


def test_a_service_process_starts_without_the_client_side() -> None:
    """What a service process imports to serve (``flamepy``, ``FlameInstance``, the instance runtime) leaves
    out what only a client, a YAML file or an async entrypoint needs: its cold start is mostly imports."""
    heavy = (
        "grpc",
        "yaml",
        "asyncio",
        "importlib.metadata",
        "google.protobuf",
        "flamepy_core.client.session",
        "flamepy.cache",
    )
    code = (
        "import sys, flamepy\n"
        "from flamepy.service import FlameInstance\n"
        "import flamepy_core.instance.runtime\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "", f"loaded on a service's start path: {out.stdout.strip()}"
