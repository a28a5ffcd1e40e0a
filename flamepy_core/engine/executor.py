"""Starting and stopping instance processes, the way Flame's executors do.

An instance is the application's ``command`` + ``arguments`` run in its ``working_directory`` with its
``environments`` (``$VAR``/``${VAR}`` expanded), plus ``FLAME_INSTANCE_ENDPOINT`` (where the instance
must serve ``flame.v1.Instance``), ``FLAME_CACHE_ENDPOINT`` and ``FLAME_ENDPOINT``. With the gRPC instance
link ``FLAME_INSTANCE_ENDPOINT`` is a bare unix-socket path, exactly what Flame passes, so a service
written for Flame runs unchanged; other links pass a URL with a scheme. Output goes to
``FLAME_HOME/logs/instances/<app>-<id>.out|.err``; the tail of ``.err`` explains a crash.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from flamepy_core.config import ENV_SERIALIZER, resolve_config
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import Channel, Transport, TransportCapabilities
from flamepy_core.engine.choice import local_endpoint, socket_path
from flamepy_core.instance.generic import startup_variable
from flamepy_core.plugin_classes import SERIALIZER_HINT_ENV
from flamepy_core.plugins import Chosen, PluginRegistry, get_registry
from flamepy_core.privacy import create_private_file, open_private, private_subdir
from flamepy_core.wire.proto import types_pb2 as pb

log = logging.getLogger(__name__)

ENV_INSTANCE_ENDPOINT = "FLAME_INSTANCE_ENDPOINT"
"""Where an instance must serve ``flame.v1.Instance``: Flame's own variable."""
ENV_FAST_INSTANCE_ENDPOINT = "FLAMEPY_INSTANCE_ENDPOINT"
"""A second endpoint offered to services written with this SDK (their runtime prefers it)."""
ENV_INSTANCE_TRANSPORTS = "FLAMEPY_INSTANCE_TRANSPORTS"
"""The classes (``module:Class``) of the transports of both endpoints: a service written with this SDK
builds its transport from them instead of scanning every installed plugin (a cold start's largest
cost after the imports). It scans when they are not importable there."""
ENV_INSTANCE_SERIALIZER = SERIALIZER_HINT_ENV
"""The class (``module:Class``) of the serializer the instance's configuration names: a ``FlameInstance``
builds it from that class instead of scanning every installed plugin at its first task."""


def class_path(transport: Transport) -> str:
    """``module:Class`` of a transport object: what ``FLAMEPY_INSTANCE_TRANSPORTS`` lists."""
    cls = type(transport)
    return f"{cls.__module__}:{cls.__qualname__}"


class Instance(Protocol):
    """One running instance as the scheduler drives it: a process (:class:`InstanceProcess`) or a service
    loaded into the server's own process (:class:`~flamepy_core.engine.inprocess.InProcessInstance`)."""

    id: str
    app_name: str
    url: str
    """Where it is (or will be) reached; for messages."""

    @property
    def channel(self) -> Channel:
        """The link to it; ``UNAVAILABLE`` until :meth:`connect_if_listening` succeeded."""
        ...

    @property
    def pid(self) -> int: ...

    def connect_if_listening(self) -> bool:
        """Connect once it listens; False while it does not yet."""
        ...

    def alive(self) -> bool: ...

    def describe_exit(self, wait: float = 1.0) -> str:
        """Why it is gone (or stopped answering), for the error a task or session gets."""
        ...

    def stderr_tail(self, lines: int | None = None) -> str: ...

    def stop(self, grace: float) -> None:
        """Stop it (``grace`` seconds to finish) and release its link (blocking)."""
        ...

    # What the scheduler's supervisor watches, without blocking:

    ready_fd: int | None
    """The read end of its readiness pipe, while it has not said it listens or sends heartbeats on it;
    else None."""
    last_beat: float | None
    """``time.monotonic()`` of its last heartbeat; None for an instance that sends none."""
    pidfd: int | None
    """Readable once it exited (Linux); None where there is none (then it is polled)."""
    started: float
    """``time.monotonic()`` when it was started."""
    ready_at_once: bool
    """It listens from the moment it exists (an in-process instance)."""

    @property
    def link_capabilities(self) -> TransportCapabilities | None:
        """The capabilities of the transport it is reached with (None before connecting)."""
        ...

    def read_ready(self) -> bool | None:
        """Drain the readiness pipe: True once it said it listens."""
        ...

    def close_ready(self) -> None: ...

    def listening(self) -> LinkOption | None:
        """The endpoint whose socket exists, or None."""
        ...

    def connect(self, option: LinkOption | None = None) -> Channel: ...

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for it to end (and reap it): True once it has."""
        ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def close_channel(self) -> None: ...

    def cleanup(self) -> None:
        """After it ended: release its channel, descriptors and socket files."""
        ...


class InstanceLauncher(Protocol):
    """Starts instances of an application: :class:`Launcher` (processes) or ``InProcessLauncher``."""

    extra_env: dict[str, str]
    """Variables every instance gets beyond the server's environment (process instances only)."""
    cache_endpoint: str
    """The object cache instances are told to use."""

    def start(self, app: pb.Application, instance_id: str, *, awaited: bool = True) -> Instance:
        """Start one instance; ``awaited`` when a session waits for it (a spare started ahead is not)."""
        ...


@dataclass(frozen=True)
class LinkOption:
    """One way to reach an instance: the socket file that appears when it listens, and how to call it."""

    socket_path: str
    url: str
    transport: Transport


@dataclass(frozen=True)
class InstanceLink:
    """How the server reaches its instances.

    ``compat`` is what ``FLAME_INSTANCE_ENDPOINT`` names: for a transport that declares
    ``bare_path_scheme`` a bare socket path, exactly what Flame's executors pass, so a service written for
    Flame runs unchanged; otherwise the endpoint's URL. ``fast`` (optional) is offered to services written
    with this SDK through ``FLAMEPY_INSTANCE_ENDPOINT``; our instance runtime prefers it. The socket the
    instance creates tells the server which one it chose.
    """

    compat: Transport
    socket_dir: Path
    fast: Transport | None = None

    def _endpoint(self, transport: Transport, name: str) -> tuple[str, LinkOption]:
        url = local_endpoint(transport, self.socket_dir, name)
        path = socket_path(transport, url)
        if path is None:
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"transport '{transport.name}' gave {url} as a local endpoint in {self.socket_dir}, which is not "
                f"a socket file of its local_schemes ({', '.join(transport.capabilities.local_schemes) or 'none'}); "
                f"an instance link needs an endpoint fixed before the instance listens: use a shorter "
                f"FLAME_SOCKET_DIR, or another instance transport",
            )
        scheme = transport.capabilities.bare_path_scheme
        value = path if scheme is not None and url == f"{scheme}://{path}" else url
        return value, LinkOption(path, url, transport)

    def transports(self) -> list[Transport]:
        """The transports of the endpoints :meth:`plan` offers, preferred first."""
        if self.fast is not None and self.fast.name != self.compat.name:
            return [self.fast, self.compat]
        return [self.compat]

    def plan(self, instance_id: str) -> tuple[dict[str, str], list[LinkOption]]:
        """The environment to give the instance, and the ways to reach it, preferred first."""
        env_value, compat = self._endpoint(self.compat, instance_id)
        env = {ENV_INSTANCE_ENDPOINT: env_value}
        options = [compat]
        if self.fast is not None and self.fast.name != self.compat.name:
            _bare, fast = self._endpoint(self.fast, f"{instance_id}-fast")
            env[ENV_FAST_INSTANCE_ENDPOINT] = fast.url
            options.insert(0, fast)
        env[ENV_INSTANCE_TRANSPORTS] = ",".join(class_path(option.transport) for option in options)
        return env, options


def client_env(chosen: Chosen, options: Mapping[str, Any]) -> dict[str, str]:
    """Client security ``options`` of ``chosen``'s transport as the variables its client settings declare."""
    security = chosen.spec.capabilities.security
    if security is None or not options:
        return {}
    by_option = {s.option: s for s in security.for_role("client")}
    env: dict[str, str] = {}
    for option, value in options.items():
        setting = by_option.get(option)
        if setting is None or setting.env is None:
            raise FlameError(
                FlameErrorCode.INTERNAL,
                f"transport '{chosen.spec.name}' gave its instances the option {option}, which none of its client "
                f"security settings passes through the environment",
            )
        env[setting.env] = str(value)
    return env


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_status(code: int) -> str:
    """How a process ended, from its wait status: a signal named as a signal, an exit code as a code.

    ``code`` is ``Popen.returncode``: negative for a signal. Codes 129-192 are what a shell exits with
    when its child was killed by signal ``code - 128``: still an exit code, with that reading added.
    """
    if code < 0:
        return f"was killed by {_signal_name(-code)}"
    text = f"exited with code {code}"
    if 128 < code <= 128 + 64:
        text += f" (a shell reports a child killed by {_signal_name(code - 128)} this way)"
    return text


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_status(pid: int) -> tuple[str, float] | None:
    """``(state, cpu seconds)`` of a process from ``/proc/<pid>/stat``: its state letter (``R`` running,
    ``S`` sleeping, ``T`` stopped by a signal, ``Z`` zombie...) and the CPU time it has used (user +
    system). None where there is no ``/proc`` or no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return None


READY_FD_ENV = "FLAMEPY_READY_FD"
"""The write end of a pipe the runtime passes to an instance: it writes one byte once it listens.

A service written with this SDK signals readiness this way (no polling); one written with Flame's SDK
ignores it, and is found ready when its socket file appears. Its first byte is ``HEARTBEAT_READY`` when
the instance goes on writing a byte every ``FLAMEPY_HEARTBEAT_INTERVAL`` seconds from a thread of its
own: its heartbeats, which stop when the process is frozen or a callback holds the GIL."""
HEARTBEAT_INTERVAL_ENV = "FLAMEPY_HEARTBEAT_INTERVAL"
"""Seconds between an instance's heartbeats on its readiness pipe (the server's ``heartbeat_interval``)."""
HEARTBEAT_READY = b"H"
"""The readiness byte of an instance that sends heartbeats after it."""


class InstanceProcess:
    """One running service process, the readiness pipe it was given, and the channel to it once it listens.

    Nothing here blocks, except :meth:`stop`: the scheduler's supervisor polls these from its loop.
    """

    def __init__(
        self,
        instance_id: str,
        app_name: str,
        popen: subprocess.Popen[bytes],
        options: list[LinkOption],
        err_path: Path,
        tail_lines: int = 20,
        ready_fd: int | None = None,
    ) -> None:
        self.id = instance_id
        self.app_name = app_name
        self.popen = popen
        self.options = options
        self.err_path = err_path
        self.tail_lines = tail_lines
        self.url = options[0].url if options else ""
        self._channel: Channel | None = None
        self._link_capabilities: TransportCapabilities | None = None
        self.ready_fd = ready_fd
        """Read end of the readiness pipe (non-blocking); None once closed."""
        self.last_beat: float | None = None
        """When it last wrote on the pipe, once it said it sends heartbeats; else None."""
        self._said_ready = False
        self.pidfd: int | None = None
        """A descriptor that becomes readable when the process exits (Linux), else None."""
        if hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):
                self.pidfd = os.pidfd_open(popen.pid)
        self.command = " ".join(popen.args) if isinstance(popen.args, list) else str(popen.args)
        self.started = time.monotonic()

    ready_at_once = False
    """True for an instance that listens from the moment it exists (no process to wait for)."""

    @property
    def link_capabilities(self) -> TransportCapabilities | None:
        """The capabilities of the transport of the endpoint connected to (None before connecting)."""
        return self._link_capabilities

    @property
    def channel(self) -> Channel:
        if self._channel is None:
            raise FlameError(FlameErrorCode.UNAVAILABLE, f"instance {self.id} is not listening yet")
        return self._channel

    @property
    def connected(self) -> bool:
        return self._channel is not None

    def read_ready(self) -> bool | None:
        """Drain the readiness pipe: True once the instance said it listens, None if it has not (yet).

        An instance whose readiness byte is ``HEARTBEAT_READY`` keeps the pipe open and writes on it
        every heartbeat interval: each read then records the time in ``last_beat``. The pipe closing (the
        process exited, or closed the descriptor, as one that sends no heartbeats does after its byte)
        closes our end too; without a byte, readiness is then only known from the socket file.
        """
        fd = self.ready_fd
        if fd is None:
            return None
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return True if self._said_ready else None
        except OSError:
            data = b""
        if not data:
            self.close_ready()
            self.last_beat = None  # no more heartbeats: liveness falls back to the process state
            return True if self._said_ready else None
        if (not self._said_ready and data.startswith(HEARTBEAT_READY)) or self.last_beat is not None:
            self.last_beat = time.monotonic()
        self._said_ready = True
        if self.last_beat is None:
            self.close_ready()  # it said it listens and sends nothing more
        return True

    def close_ready(self) -> None:
        if self.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.ready_fd)
            self.ready_fd = None

    def listening(self) -> LinkOption | None:
        """The endpoint whose socket file exists, preferred first; None while none does."""
        for option in self.options:
            if os.path.exists(option.socket_path):
                return option
        return None

    def connect(self, option: LinkOption | None = None) -> Channel:
        """Make the channel to ``option`` (or to the endpoint whose socket exists)."""
        if self._channel is None:
            chosen = option or self.listening() or self.options[0]
            self.url = chosen.url
            self._channel = chosen.transport.connect(chosen.url)
            self._link_capabilities = chosen.transport.capabilities
        return self._channel

    def connect_if_listening(self) -> bool:
        """Connect to whichever endpoint the instance created its socket for; False while none exists."""
        if self._channel is not None:
            return True
        option = self.listening()
        if option is None:
            return False
        self.connect(option)
        return True

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the process to exit (and reap it); True once it has."""
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def describe_exit(self, wait: float = 1.0) -> str:
        """'exited with code N' / 'was killed by SIGKILL', plus the last lines of its stderr."""
        try:
            code = self.popen.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            how = "stopped answering (the process is still running)"
        else:
            how = describe_status(code)
        tail = self.stderr_tail()
        detail = f"instance {self.id} (pid {self.pid}) of application {self.app_name} {how}"
        if tail:
            detail += f"; last lines of its stderr ({self.err_path}):\n{tail}"
        return detail

    def stderr_tail(self, lines: int | None = None) -> str:
        try:
            with open(self.err_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 16384))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(deque(text.rstrip().splitlines(), maxlen=self.tail_lines if lines is None else lines))

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the instance's process group (it runs in a session of its own)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def terminate(self) -> None:
        self.signal_group(signal.SIGTERM)

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)

    def close_channel(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            try:
                channel.close()
            except Exception:  # closing must never stop the shutdown
                log.debug("closing the channel of instance %s failed", self.id, exc_info=True)

    def cleanup(self) -> None:
        """After the process exited: close the channel and descriptors, remove its socket files."""
        self.close_channel()
        self.close_ready()
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None
        for option in self.options:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(option.socket_path)

    def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (blocking); then :meth:`cleanup`."""
        self.close_channel()
        if self.alive():
            self.terminate()
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
                self.popen.wait(timeout=10)
        else:
            self.popen.wait(timeout=1)
        self.cleanup()


class Launcher:
    """Builds an instance's command line and environment from its application and starts it."""

    def __init__(
        self,
        home: Path,
        link: InstanceLink,
        *,
        cache_endpoint: str,
        frontend_endpoint: str,
        extra_env: dict[str, str] | None = None,
        stderr_tail_lines: int = 20,
        heartbeat_interval: float = 1.0,
        registry: PluginRegistry | None = None,
    ) -> None:
        self.home = home
        self.stderr_tail_lines = stderr_tail_lines
        self.heartbeat_interval = heartbeat_interval
        self.link = link
        self.cache_endpoint = cache_endpoint
        self.frontend_endpoint = frontend_endpoint
        self.extra_env = dict(extra_env or {})
        self.prepare: Callable[[pb.Application, dict[str, str]], None] | None = None
        """Completes an instance's environment before it starts (the installer: engine/installer.py)."""
        self.log_dir = private_subdir(home / "logs" / "instances")
        self.registry = registry
        self._configured_serializer: str | None = None
        self._serializer_classes: dict[str, str] = {}
        self.generic: GenericSlot | None = None
        """The generic process kept ready (``generic_instance``), when the server keeps one."""

    def _serializer_hint(self, env: Mapping[str, str]) -> str:
        """``module:Class`` of the serializer an instance with ``env`` will choose if it names none itself
        (``FLAME_SERIALIZER``, else the configuration as this server read it first), or "" when its plugin
        does not declare its class (``SerializerSpec.factory_path``). A wrong guess costs only the hint:
        the instance checks the class's name against its own choice and asks its registry otherwise."""
        name = (env.get(ENV_SERIALIZER) or "").strip()
        if not name:
            if self._configured_serializer is None:
                try:
                    self._configured_serializer = resolve_config().serializer
                except FlameError as exc:  # a broken flame.yaml: the instance reports it, if it reads it
                    log.debug("no serializer hint for instances: %s", exc.message)
                    self._configured_serializer = ""
            name = self._configured_serializer
        if name and name not in self._serializer_classes:
            registry = self.registry or get_registry()
            found = [c.spec.factory_path for c in registry.serializers() if c.spec.name == name]
            self._serializer_classes[name] = found[-1] if found else ""  # the last declared wins, as in the registry
        return self._serializer_classes.get(name, "")

    def _environment(self, app: pb.Application | None, link_env: dict[str, str]) -> dict[str, str]:
        """An instance's environment; without ``app``, the generic process's (no application's variables)."""
        env = dict(os.environ)
        env.pop(ENV_FAST_INSTANCE_ENDPOINT, None)
        env.pop(ENV_INSTANCE_TRANSPORTS, None)
        env.pop(ENV_INSTANCE_SERIALIZER, None)
        env.update(self.extra_env)
        if app is not None:
            for item in app.spec.environments:
                env[item.name] = _expand(item.value, env)
        env.update(link_env)
        hint = self._serializer_hint(env)
        if hint:
            env[ENV_INSTANCE_SERIALIZER] = hint
        env["FLAME_CACHE_ENDPOINT"] = self.cache_endpoint
        env["FLAME_ENDPOINT"] = self.frontend_endpoint
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def start(self, app: pb.Application, instance_id: str, *, awaited: bool = True) -> InstanceProcess:
        """Start one instance of ``app``. One that a session waits for (``awaited``) is handed to the generic
        process when it fits it; a spare started ahead, whose start nobody waits for, never is: the generic
        process stays for the next new application."""
        name = app.metadata.name
        spec = app.spec
        if not spec.HasField("command") or not spec.command:
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"application {name} has no command; register it with spec.command (e.g. python) and "
                f"spec.arguments (e.g. [my_service.py])",
            )
        link_env, options = self.link.plan(instance_id)
        env = self._environment(app, link_env)
        if self.prepare is not None:
            self.prepare(app, env)
        if spec.HasField("working_directory") and spec.working_directory:
            cwd = Path(_expand(spec.working_directory, env))
            if not cwd.is_dir():
                raise FlameError(
                    FlameErrorCode.INVALID_CONFIG,
                    f"the working directory {cwd} of application {name} does not exist on this machine; "
                    f"fix spec.working_directory in its YAML, then run `flmctl update -a FILE`",
                )
        else:
            cwd = self.home / "work" / name
            private_subdir(cwd)
        command = _expand(spec.command, env)
        resolved = command if os.sep in command else shutil.which(command, path=env.get("PATH"))
        if resolved is None or not os.path.exists(resolved if os.path.isabs(resolved) else cwd / resolved):
            raise FlameError(
                FlameErrorCode.INVALID_CONFIG,
                f"the command {command!r} of application {name} was not found (looked in PATH and {cwd}); "
                f"fix spec.command in its YAML, then run `flmctl update -a FILE`",
            )
        argv = [resolved, *(_expand(a, env) for a in spec.arguments)]
        out_path = self.log_dir / f"{name}-{instance_id}.out"
        err_path = self.log_dir / f"{name}-{instance_id}.err"
        for option in options:  # a stale socket would make a dead instance look alive
            with contextlib.suppress(FileNotFoundError):
                os.unlink(option.socket_path)
        env[HEARTBEAT_INTERVAL_ENV] = f"{self.heartbeat_interval:g}"
        if self.generic is not None and awaited:
            handed = self.generic.hand_over(argv, cwd, env, out_path, err_path)
            if handed is not None:
                log.info(
                    "instance %s of %s: the generic process (pid %d) runs %s", instance_id, name, handed.pid, argv[1]
                )
                process = InstanceProcess(
                    instance_id,
                    name,
                    handed.popen,
                    options,
                    err_path,
                    tail_lines=self.stderr_tail_lines,
                    ready_fd=handed.ready_read,
                )
                process.command = " ".join(argv)
                return process
        append = os.O_WRONLY | os.O_APPEND
        with (
            os.fdopen(open_private(out_path, append), "ab") as out,
            os.fdopen(open_private(err_path, append), "ab") as err,
        ):
            popen, ready_read = _spawn_with_ready_pipe(argv, cwd, env, subprocess.DEVNULL, out, err)
        log.info("started instance %s of %s: pid %d, %s", instance_id, name, popen.pid, " ".join(argv))
        return InstanceProcess(
            instance_id, name, popen, options, err_path, tail_lines=self.stderr_tail_lines, ready_fd=ready_read
        )

    def start_generic(self) -> GenericProcess:
        """Start a generic process (blocking: fork and exec): ``python -m flamepy_core.instance.generic``
        in a private empty directory, with what every instance's environment has and no application's."""
        link_env = {ENV_INSTANCE_TRANSPORTS: ",".join(class_path(t) for t in self.link.transports())}
        env = self._environment(None, link_env)
        env[HEARTBEAT_INTERVAL_ENV] = f"{self.heartbeat_interval:g}"
        cwd = private_subdir(self.home / "work" / GENERIC_DIR)
        err_path = self.log_dir / "generic.err"
        executable = os.path.abspath(sys.executable)
        with os.fdopen(open_private(err_path, os.O_WRONLY | os.O_APPEND), "ab") as err:
            popen, ready_read = _spawn_with_ready_pipe(
                [executable, "-m", GENERIC_MODULE], cwd, env, subprocess.PIPE, err, err
            )
        log.debug("started the generic instance process: pid %d", popen.pid)
        return GenericProcess(popen, executable, env, ready_read)


HANDOVER_START_WAIT = 2.0
"""Seconds an instance waits for a generic process that is being started (a fork and an exec, usually a
few ms) before it starts a process of its own instead."""
OWN_PROCESS_ENV = "FLAMEPY_OWN_PROCESS"
"""Set to anything but "" or "0" in an application's environment: its instances are never handed to the
generic process (say, a script that puts another flamepy on ``sys.path`` before importing it)."""
GENERIC_MODULE = "flamepy_core.instance.generic"
"""What a generic process runs (``python -m``): see that module for what it does and what it promises."""
GENERIC_DIR = ".generic"
"""The generic process's working directory until the handover, under ``FLAME_HOME/work/`` (an application
name cannot start with a dot, so no application's directory is this one)."""


class GenericProcess:
    """A generic process (``flamepy_core.instance.generic``), waiting on its standard input to become an
    instance. ``env`` is the environment it was started with, ``executable`` its interpreter."""

    def __init__(self, popen: subprocess.Popen[bytes], executable: str, env: dict[str, str], ready_read: int) -> None:
        self.popen = popen
        self.executable = executable
        self.env = env
        self.ready_read = ready_read

    @property
    def pid(self) -> int:
        return self.popen.pid

    def unfit(self, argv: list[str], cwd: Path, env: Mapping[str, str]) -> str | None:
        """Why ``argv`` in ``cwd`` with ``env`` would not run as it does in a process of its own, or None
        when it would (the rules: ``flamepy_core.instance.generic``)."""
        command = os.path.normpath(os.path.join(cwd, argv[0]))
        if command != self.executable:
            return f"its command {argv[0]} is not the server's Python {self.executable}"
        if len(argv) < 2 or not argv[1] or argv[1].startswith("-"):
            return "its first argument is not a script (an interpreter option, or none)"
        if env.get(OWN_PROCESS_ENV, "").strip() not in ("", "0"):
            return f"its environment sets {OWN_PROCESS_ENV}"
        for name in set(env) | set(self.env):
            if env.get(name) != self.env.get(name) and startup_variable(name):
                return f"its environment sets {name}, which the interpreter reads as it starts"
        return None

    def hand_over(self, argv: list[str], cwd: Path, env: dict[str, str], out: Path, err: Path) -> bool:
        """Tell the process to become this instance; False when it cannot hear it (it exited)."""
        message = {"argv": argv, "cwd": str(cwd), "env": env, "out": str(out), "err": str(err)}
        stdin = self.popen.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(message).encode())
            stdin.close()
        except (OSError, ValueError):
            return False
        return self.popen.poll() is None

    def stop(self) -> None:
        """Kill it (it runs nobody's code yet) and reap it."""
        with contextlib.suppress(OSError, ValueError):
            assert self.popen.stdin is not None
            self.popen.stdin.close()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.close(self.ready_read)


class GenericSlot:
    """At most one generic process, kept ready for the next instance that fits it (thread-safe).

    The scheduler decides when to start one (:meth:`fill`, on a spawner thread) and counts it under the
    machine-wide cap (:meth:`held`); the launcher hands an instance to it (:meth:`hand_over`).
    """

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self._lock = threading.Lock()
        self._started = threading.Condition(self._lock)
        """Notified when a start ends (:meth:`fill`): an instance handed over meanwhile waits for it."""
        self._process: GenericProcess | None = None
        self._starting = False
        self._cancelled = False
        """:meth:`drop` or :meth:`close` came while one was starting: it is stopped once started."""
        self._closed = False

    def held(self) -> int:
        """1 while a generic process is held or starting, else 0. One that exited on its own (it could not
        import the runtime, or was killed) is reaped here and no longer held."""
        with self._lock:
            dead = self._process if self._process is not None and self._process.popen.poll() is not None else None
            if dead is not None:
                self._process = None
            held = 1 if self._process is not None or self._starting else 0
        if dead is not None:
            log.warning(
                "the generic instance process (pid %d) exited on its own (%s): see %s",
                dead.pid,
                describe_status(dead.popen.returncode),
                self.launcher.log_dir / "generic.err",
            )
            dead.stop()
        return held

    def fill(self) -> None:
        """Start a generic process unless one is held (blocking)."""
        with self._lock:
            if self._process is not None or self._starting or self._closed:
                return
            self._starting = True
            self._cancelled = False
        process: GenericProcess | None = None
        try:
            process = self.launcher.start_generic()
        except Exception:  # no generic process: instances start as before
            log.warning("could not start a generic instance process", exc_info=True)
        finally:
            with self._lock:
                self._starting = False
                if process is not None and not self._closed and not self._cancelled:
                    self._process, process = process, None
                self._started.notify_all()
        if process is not None:  # dropped or closed meanwhile
            process.stop()

    def hand_over(self, argv: list[str], cwd: Path, env: dict[str, str], out: Path, err: Path) -> GenericProcess | None:
        """Make the held generic process this instance, if there is one that is alive and the instance fits
        it: the process, its readiness pipe already set in ``env``; else None (start one as before)."""
        with self._lock:
            # One being started (forked, not yet exec-ed and recorded): wait for it rather than start a
            # process of our own beside it, which would leave it in the way under the cap.
            self._started.wait_for(lambda: not self._starting, timeout=HANDOVER_START_WAIT)
            process = self._process
            if process is None:
                return None
            env[READY_FD_ENV] = process.env[READY_FD_ENV]
            why = process.unfit(argv, cwd, env)
            if why is not None:
                del env[READY_FD_ENV]
                log.debug("not handed to the generic process: %s", why)
                return None
            self._process = None
        for path in (out, err):  # created private, as for a spawned instance; the process opens them
            create_private_file(path)
        if process.hand_over(argv, cwd, env, out, err):
            return process
        log.info("the generic instance process (pid %d) had exited: starting the instance anew", process.pid)
        del env[READY_FD_ENV]
        process.stop()
        return None

    def drop(self) -> None:
        """Stop the held generic process (its place under the cap is needed), if any."""
        with self._lock:
            process, self._process = self._process, None
            self._cancelled = self._starting
        if process is not None:
            log.debug("stopping the generic instance process (pid %d)", process.pid)
            process.stop()

    def close(self) -> None:
        """Stop it for good (the server stops)."""
        with self._lock:
            self._closed = True
        self.drop()
        deadline = time.monotonic() + 10.0
        while self.held() and time.monotonic() < deadline:  # one starting: fill() stops it once started
            time.sleep(0.005)


_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _expand(value: str, env: dict[str, str]) -> str:
    """``$VAR`` and ``${VAR}`` from ``env`` (not from this process), as Flame's executors do.

    Unknown variables are left as written, like ``os.path.expandvars``.
    """
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), m.group(0)), value)


def _spawn_with_ready_pipe(
    argv: list[str], cwd: Path | str, env: dict[str, str], stdin: Any, stdout: Any, stderr: Any
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``argv`` in a session of its own, with the write end of a pipe it signals readiness on.

    The child learns the pipe from ``READY_FD_ENV`` (set in ``env``: readiness is signalled, not
    discovered); the parent keeps only the read end, non-blocking, so looking never stalls the server.
    """
    ready_read, ready_write = os.pipe()
    env[READY_FD_ENV] = str(ready_write)
    try:
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            pass_fds=(ready_write,),
        )
    except BaseException:
        os.close(ready_read)
        raise
    finally:
        os.close(ready_write)
    os.set_blocking(ready_read, False)
    return popen, ready_read
