"""The plumbing every part of the transport suite shares: the base class, its hooks, and helpers.

:class:`TransportSuiteBase` builds the transport under test and fresh endpoints, serves handlers, gates
tests on capabilities and bounds hypothesis. It holds no tests itself: the tests are grouped by area in
mixins (:mod:`.transport_deadlines`, :mod:`.transport_streams`, ...) that :class:`~flamepy_conformance.
TransportTests` combines, each deriving from this base so it can use the plumbing. The module-level
helpers (``expect_error``, ``assert_same_bytes``, ...) are for those mixins and for authors' own tests.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, settings

from flamepy_conformance.capabilities import MARKER, Capability, skip_unless
from flamepy_conformance.options import SuiteOptions
from flamepy_conformance.probe import ECHO, echo_answer
from flamepy_core.contracts.bounds import PROMPT_FAILURE_S
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.contracts.transport import (
    Channel,
    Handler,
    Server,
    Transport,
    TransportCapabilities,
    TransportSpec,
)
from flamepy_core.plugins import PluginRegistry, get_registry
from flamepy_core.transport_kit import DEFAULT_CALL_TIMEOUT

T = TypeVar("T")

DEFAULT_MAX_MESSAGE_CAP = 16 * 1024 * 1024
"""Default of ``--flamepy-max-message``: the largest message the boundary tests will build."""


_CHILD_SERVER = """\
import ast, sys
from flamepy_core.plugins import get_registry
from flamepy_conformance.probe import probe_handlers
transport = get_registry().transport(sys.argv[1], **ast.literal_eval(sys.argv[3]))
server = transport.serve(sys.argv[2], probe_handlers("child"))
print("READY " + server.endpoint, flush=True)
sys.stdin.read()
server.stop(1.0)
"""
"""The cross-process test's server: serve the probe service, say READY, stop when stdin closes."""


# -- helpers -----------------------------------------------------------------------------------------


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _short_temp_root() -> str:
    # AF_UNIX paths must stay under ~100 characters; a long $TMPDIR (or pytest's tmp_path) breaks them.
    root = tempfile.gettempdir()
    if len(root) > 40 and os.path.isdir("/tmp"):
        root = "/tmp"
    return root


def _mentions(message: str, number: int) -> bool:
    return any(form in message for form in (str(number), f"{number:,}", f"{number:_}"))


def _show(data: object, limit: int = 120) -> str:
    text = repr(data)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(data) if isinstance(data, bytes) else '?'} bytes)"


def assert_same_bytes(got: object, expected: bytes, what: str) -> None:
    """Byte-exact comparison that reports length and first difference instead of dumping megabytes."""
    assert type(got) is bytes, f"{what}: expected bytes, got {type(got).__name__} {_show(got)}"
    if got == expected:
        return
    common, step = min(len(got), len(expected)), 4096
    block = next((o for o in range(0, common, step) if got[o : o + step] != expected[o : o + step]), common)
    first = next((i for i in range(block, min(block + step, common)) if got[i] != expected[i]), common)
    raise AssertionError(
        f"{what}: {len(got)} bytes received, {len(expected)} expected; first difference at offset {first} "
        f"(got {_show(got[first : first + 16])}, expected {_show(expected[first : first + 16])})"
    )


def expect_error(
    code: FlameErrorCode, call: Callable[[], object], what: str, *, within: float | None = None
) -> FlameError:
    """Run ``call``; it must raise ``FlameError(code)`` (within ``within`` seconds when given)."""
    start = time.monotonic()
    try:
        result = call()
    except FlameError as err:
        elapsed = time.monotonic() - start
        assert err.code == code, (
            f"{what}: expected FlameError({code.name}), got FlameError({err.code.name}, {err.message!r}) "
            f"after {elapsed:.2f} s"
        )
        if within is not None:
            assert elapsed < within, f"{what}: {code.name} came after {elapsed:.2f} s; it must come within {within} s"
        return err
    except Exception as exc:
        raise AssertionError(
            f"{what}: expected FlameError({code.name}), got {type(exc).__name__}: {exc} (every failure a "
            f"transport reports must be a FlameError)"
        ) from exc
    raise AssertionError(f"{what}: expected FlameError({code.name}), but the call returned {_show(result)}")


def retry_while_unavailable(call: Callable[[], T], within: float) -> T:
    """Call until it stops raising UNAVAILABLE or ``within`` seconds pass (reconnect backoff)."""
    give_up = time.monotonic() + within
    while True:
        try:
            return call()
        except FlameError as err:
            if err.code != FlameErrorCode.UNAVAILABLE or time.monotonic() >= give_up:
                raise
        time.sleep(0.05)


def _close_iterator(it: object) -> None:
    close = getattr(it, "close", None)
    if callable(close):
        close()


class _Background(Generic[T]):
    """Run a call on a daemon thread, to observe it from the test (a stuck call never blocks exit)."""

    def __init__(self, call: Callable[[], T]) -> None:
        self.result: T | None = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self._call = call
        self._thread = threading.Thread(target=self._run, daemon=True, name="flamepy-conformance-call")
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self._call()
        except BaseException as exc:
            self.error = exc
        self.finished_at = time.monotonic()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s; True when the call finished."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


def _read_line(stream: Any, timeout: float) -> str | None:
    """One line from a child's pipe, or None after ``timeout`` seconds (the child may hang)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return None


class TransportSuiteBase(SuiteOptions):
    """What every transport test stands on: the transport under test, its endpoints, servers and bounds.

    Every test gets a fresh transport from :meth:`make_transport` (``self.transport``) and fresh
    endpoints from :meth:`make_endpoint`. Class attributes tune the run without touching the tests.
    """

    __flamepy_conformance__: ClassVar[bool] = True
    """Lets the pytest plugin mark the items of subclasses without importing this module."""

    transport_name: ClassVar[str | None] = None
    """Registry name of the transport; ``None`` means "take it from ``--flamepy-transport``"."""
    transport_options: ClassVar[Mapping[str, Any]] = {}
    """Keyword options for the transport's factory (see :meth:`make_transport`)."""
    endpoint_scheme: ClassVar[str | None] = None
    """The scheme :meth:`make_endpoint` uses; ``None`` = the transport's first scheme."""

    max_examples: ClassVar[int] = 20
    """Hypothesis examples per property test (``--flamepy-max-examples`` overrides)."""
    shrink_failures: ClassVar[bool] = True
    """Shrink a failing example to the smallest one (hypothesis's shrink phase); False reports the first
    failure as found, which is faster when only the verdict counts."""
    stateful_examples: ClassVar[int] = 6
    stateful_steps: ClassVar[int] = 12
    call_timeout: ClassVar[float] = 10.0
    """Deadline of ordinary calls: a transport that hangs fails instead of blocking the run."""
    deadline_timeout: ClassVar[float] = 0.2
    """The deadline the deadline tests set while the handler sleeps ``slow_handler_s``."""
    slow_handler_s: ClassVar[float] = 2.0
    prompt_deadline_s: ClassVar[float] = 1.5
    """A missed deadline must be reported within this many seconds of the call starting."""
    prompt_unavailable_s: ClassVar[float] = PROMPT_FAILURE_S
    """An unreachable peer must be reported within this many seconds (the contract's "promptly")."""
    restart_retry_s: ClassVar[float] = 5.0
    """How long a channel may take to find a restarted server (reconnect backoff)."""
    stop_grace: ClassVar[float] = 0.5
    concurrency: ClassVar[tuple[int, int]] = (16, 20)
    """(threads, calls per thread) of the concurrency test."""
    many_calls: ClassVar[tuple[int, int]] = (16, 250)
    """(threads, calls per thread) of the test of late replies and abandoned calls: many thousands."""
    leak_calls: ClassVar[int] = 1000
    """Calls of the resource test, after which nothing may be left behind."""
    documented_default_timeout: ClassVar[float] = DEFAULT_CALL_TIMEOUT
    """The deadline a call gets when its caller passes none (``DEFAULT_TIMEOUT``): the kit's 60 s. A
    transport that documents another default sets it here."""

    transport: Transport
    _flamepy_config: pytest.Config | None = None
    _flamepy_tmp_path: Path | None = None
    _flamepy_tmpdirs: list[str]

    # -- hooks a subclass may override --------------------------------------------------------------

    def plugin_registry(self) -> PluginRegistry:
        """The registry the transport is looked up in (override to use one with run-time plugins)."""
        return get_registry()

    def make_transport(self) -> Transport:
        """A fresh transport under test.

        Default: ``plugin_registry().transport(name, **options)`` where ``options`` are
        :attr:`transport_options` plus, when the plugin accepts it, ``max_message_size`` capped at
        ``--flamepy-max-message`` so the size boundary can be probed without allocating gigabytes.
        """
        registry = self.plugin_registry()
        chosen = registry.transport_spec(self.resolved_transport_name())
        return registry.create_transport(chosen, self.options_for(chosen.spec))

    def make_endpoint(self, tmp_path: Path) -> str:
        """A fresh endpoint nobody listens on yet, derived from the transport's (first) scheme.

        ``inmem`` -> ``inmem://<uuid>``; ``unix`` -> ``unix://<short tmp dir>/s.sock``; ``zmq+ipc`` ->
        ``zmq+ipc://<short tmp dir>/s.ipc``; another of the transport's ``local_schemes`` -> its
        ``local_endpoint(<short tmp dir>, "s")``; anything else -> ``<scheme>://127.0.0.1:<free port>``.
        Socket paths live in a short directory of their own (AF_UNIX paths must be < 100 characters,
        and pytest's ``tmp_path`` can be longer); it is removed after the test.
        """
        scheme = self.endpoint_scheme or self.transport.schemes[0]
        if scheme == "inmem":
            return f"inmem://{uuid.uuid4().hex}"
        if scheme == "unix":
            return f"unix://{self.short_tmpdir()}/s.sock"
        if scheme == "zmq+ipc":
            return f"zmq+ipc://{self.short_tmpdir()}/s.ipc"
        transport = self.transport
        if scheme in transport.capabilities.local_schemes and callable(getattr(transport, "local_endpoint", None)):
            return str(transport.local_endpoint(self.short_tmpdir(), "s"))  # type: ignore[attr-defined]
        return f"{scheme}://127.0.0.1:{free_tcp_port()}"

    def make_transport_with(self, **options: Any) -> Transport:
        """A transport like :meth:`make_transport`'s with ``options`` added, for tests that need a knob set.

        The suite uses it for ``default_timeout`` (a short default deadline) and ``max_message_size``; a
        value of ``None`` removes the option, so the plugin's default applies. The test is skipped when
        the plugin does not accept an option it needs. Override it together with :meth:`make_transport`.
        """
        registry = self.plugin_registry()
        chosen = registry.transport_spec(self.resolved_transport_name())
        missing = sorted(
            name for name, value in options.items() if value is not None and name not in chosen.spec.options
        )
        if missing:
            pytest.skip(
                f"transport {chosen.spec.name} does not accept the option(s) {', '.join(missing)}, which this "
                f"test sets (accept them to be checked)"
            )
        merged = {**self.options_for(chosen.spec), **options}
        return registry.create_transport(chosen, {k: v for k, v in merged.items() if v is not None})

    def cross_process_server_argv(self, endpoint: str) -> list[str]:
        """The command of the cross-process test's server: serves the probe service on ``endpoint``.

        It must print ``READY <bound endpoint>`` once it accepts calls and stop when its stdin closes.
        Override it when :meth:`make_transport` is overridden (the default asks the child's registry for
        the same transport name and options, which must be Python literals).
        """
        chosen = self.plugin_registry().transport_spec(self.resolved_transport_name())
        options = self.options_for(chosen.spec)
        return [sys.executable, "-c", _CHILD_SERVER, chosen.spec.name, endpoint, repr(options)]

    def forking_client_argv(self) -> list[str]:
        """The command of the fork test's client (:data:`~.transport_resources.FORKING_CLIENT`), less its
        arguments: a fresh Python process that builds the same transport as :meth:`cross_process_server_argv`.

        Override it when :meth:`make_transport` is overridden; the script takes the transport's name and
        options (Python literals) as its first two arguments.
        """
        from flamepy_conformance.transport_resources import FORKING_CLIENT

        chosen = self.plugin_registry().transport_spec(self.resolved_transport_name())
        return [sys.executable, "-c", FORKING_CLIENT, chosen.spec.name, repr(self.options_for(chosen.spec))]

    # -- plumbing ------------------------------------------------------------------------------------

    @pytest.fixture(autouse=True)
    def _flamepy_conformance_setup(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
        """Per test: record the pytest config, build the transport, honour capability marks, clean up."""
        self._flamepy_config = request.config
        self._flamepy_tmp_path = tmp_path
        self._flamepy_tmpdirs = []
        try:
            self.transport = self.make_transport()
            for mark in request.node.iter_markers(MARKER):
                for capability in mark.args:
                    skip_unless(self.transport, capability)
            yield
        finally:
            for path in self._flamepy_tmpdirs:
                shutil.rmtree(path, ignore_errors=True)

    def resolved_transport_name(self) -> str:
        """:attr:`transport_name`, or the ``--flamepy-transport`` option when that is ``None``."""
        return self._plugin_name(self.transport_name, "flamepy_transport", "transport_name", "make_transport")

    @property
    def max_message_cap(self) -> int:
        """The largest message the suite builds (``--flamepy-max-message``, default 16 MiB)."""
        return int(self._option("flamepy_max_message", DEFAULT_MAX_MESSAGE_CAP))

    def options_for(self, spec: TransportSpec) -> dict[str, Any]:
        """:attr:`transport_options`, plus a capped ``max_message_size`` when the plugin accepts it."""
        options = dict(self.transport_options)
        if "max_message_size" in spec.options and "max_message_size" not in options:
            options["max_message_size"] = min(spec.capabilities.max_message_size, self.max_message_cap)
        return options

    def short_tmpdir(self) -> str:
        """A fresh directory with a short path (for socket files), removed after the test."""
        path = tempfile.mkdtemp(prefix="fc", dir=_short_temp_root())
        if not hasattr(self, "_flamepy_tmpdirs"):
            self._flamepy_tmpdirs = []
        self._flamepy_tmpdirs.append(path)
        return path

    def new_endpoint(self) -> str:
        """A fresh endpoint from :meth:`make_endpoint`."""
        tmp_path = self._flamepy_tmp_path or Path(self.short_tmpdir())
        return self.make_endpoint(tmp_path)

    def require(self, capability: Capability | str) -> None:
        """Skip this test unless the transport declares ``capability``."""
        skip_unless(self.transport, capability)

    def examples(self, fraction: float = 1.0) -> int:
        """Hypothesis examples for a property test (a fraction of the budget for costly ones)."""
        base = int(self._option("flamepy_max_examples", self.max_examples))
        return max(1, int(base * fraction))

    def hypothesis_settings(self, fraction: float = 1.0) -> settings:
        """The suite's hypothesis settings: bounded examples, no per-example deadline, no database."""
        phases = list(Phase) if self.shrink_failures else [Phase.explicit, Phase.reuse, Phase.generate]
        return settings(
            max_examples=self.examples(fraction),
            deadline=None,
            database=None,
            print_blob=True,
            phases=phases,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )

    @property
    def capabilities(self) -> TransportCapabilities:
        return self.transport.capabilities

    @property
    def max_message_size(self) -> int:
        return self.transport.capabilities.max_message_size

    def boundary_size(self) -> int:
        """The transport's largest message, or skip when it is above what the run may allocate."""
        limit = self.max_message_size
        if limit > self.max_message_cap:
            pytest.skip(
                f"transport {self.transport.name} declares max_message_size {limit} bytes, above "
                f"--flamepy-max-message {self.max_message_cap}, and does not accept a max_message_size "
                f"option to lower it; raise --flamepy-max-message to probe the boundary"
            )
        return limit

    @contextlib.contextmanager
    def served(
        self, handlers: Mapping[str, Handler], endpoint: str | None = None, *, transport: Transport | None = None
    ) -> Iterator[tuple[Server, Channel]]:
        """Serve ``handlers`` on a fresh endpoint with a channel to it; stop and close on exit.

        ``transport`` serves and connects instead of the test's own (one made by :meth:`make_transport_with`).
        """
        transport = transport or self.transport
        server = transport.serve(endpoint or self.new_endpoint(), handlers)
        try:
            channel = transport.connect(server.endpoint)
            try:
                yield server, channel
            finally:
                channel.close()
        finally:
            server.stop(self.stop_grace)

    def echo(self, channel: Channel, payload: bytes, tag: str = "") -> None:
        """One probe call that must succeed (a warm-up, or proof the server still answers)."""
        assert_same_bytes(
            channel.unary(ECHO, payload, timeout=self.call_timeout), echo_answer(payload, ECHO, tag), "echo call"
        )

    def subprocess_env(self) -> dict[str, str]:
        """The environment of the suite's child processes: this one, with this process's ``sys.path``."""
        env = dict(os.environ)
        path = [p for p in sys.path if p and os.path.isdir(p)]
        env["PYTHONPATH"] = os.pathsep.join([*path, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return env

    @contextlib.contextmanager
    def child_server(self) -> Iterator[str]:
        """A server of the probe service in another Python process (:meth:`cross_process_server_argv`).

        Yields the endpoint it bound; closes its stdin afterwards (it stops) and kills it if it does not.
        """
        child = subprocess.Popen(
            self.cross_process_server_argv(self.new_endpoint()),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.subprocess_env(),
        )
        try:
            line = _read_line(child.stdout, 30.0)
            if not line or not line.startswith("READY "):
                child.kill()
                _, stderr = child.communicate(timeout=10)
                raise AssertionError(f"the server process did not get ready (said {line!r}); stderr:\n{stderr}")
            yield line.split(" ", 1)[1].strip()
        finally:
            if child.poll() is None:
                with contextlib.suppress(OSError):
                    assert child.stdin is not None
                    child.stdin.close()
                try:
                    child.wait(10.0)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(10.0)
            for pipe in (child.stdout, child.stderr):
                if pipe is not None:
                    pipe.close()
