"""The generic instance process: an interpreter with flamepy's instance runtime imported, no application yet.

The server keeps one ready (``generic_instance``, see ``flamepy_core.engine.executor.GenericProcess``) so
that a new application's first instance does not pay the interpreter's start and the runtime's imports
while a client waits: most of a cold start. It is started as ``python -m flamepy_core.instance.generic``
with the environment every instance gets, imports what a service written with this SDK imports before it
serves, and then blocks reading its standard input. When a new instance is to start, the server writes one
JSON message there: the script's command line, working directory, full environment, and the instance's
``.out``/``.err`` files. This process then becomes that instance, as ``python script.py args...`` would
have started: its output goes to those files, it moves to the working directory, takes the environment
(``os.environ``, so ``putenv`` too), ``sys.argv``, ``sys.path[0]`` (the script's directory, symlinks
resolved) and a fresh ``__main__`` module, and runs the script in it.

What it cannot make exact it does not fake: the server hands over only applications whose command is
this interpreter with a script as first argument and whose environment differs from this process's only
in variables that nothing read before the handover (see ``STARTUP_VARIABLES``); and when the script's
directory holds a module with the name of one imported here (which would shadow it in a fresh
interpreter), this process ``exec``s the interpreter instead, with the same command line, environment and
descriptors: a fresh start, as if the server had spawned it.

End of file on standard input before any message (the server stopped, or died) ends the process.
"""

from __future__ import annotations

import os
import sys

_AT_START = {name.partition(".")[0] for name in sys.modules} - {"runpy"}
"""Top-level modules a fresh ``python script.py`` has too when the script starts (``-m`` adds ``runpy``)."""

PRELOAD = ("flamepy", "flamepy_core.instance.runtime", "flamepy_core.plugin_classes")
"""What a service written with this SDK imports before it serves, besides its transport: the first class
``FLAMEPY_INSTANCE_TRANSPORTS`` names (the one it serves), and the modules that class lists in its
optional ``serve_modules`` (what building and serving it imports)."""

TRANSPORTS_ENV = "FLAMEPY_INSTANCE_TRANSPORTS"

STARTUP_PREFIXES = ("PYTHON", "LD_", "LC_", "MALLOC_", "GLIBC_", "PYZMQ_", "GRPC_")
STARTUP_NAMES = frozenset({"LANG", "LANGUAGE", "HOME", "TZ", "TMPDIR", "TEMP", "TMP"})
"""Variables read before the handover: by the interpreter's start (``PYTHON*``: the path, hash seed,
bytecode, warnings...; the locale; ``HOME`` for the user's site directory), by the C library and the
dynamic loader, by the bundled transports' libraries as they are imported (pyzmq's ``PYZMQ_BACKEND``,
grpcio's ``GRPC_*``), or cached by modules once read (``TZ`` by ``time``, the temporary directory by
``tempfile``). flamepy's own modules read none as they are imported (a test records what the preload
reads). An application whose environment gives one of these another value than the generic process has
gets a process of its own."""


def startup_variable(name: str) -> bool:
    """Whether changing ``name`` after the interpreter started could differ from starting with it."""
    return name in STARTUP_NAMES or name.startswith(STARTUP_PREFIXES)


def _preload() -> None:
    """Import the runtime and the transports' modules."""
    import importlib

    def load(module: str) -> object:
        try:
            return importlib.import_module(module)
        except Exception as exc:  # the instance imports it again, and reports what fails, in its own log
            print(f"flamepy generic process: could not preload {module}: {exc!r}", file=sys.stderr)
            return None

    for module in PRELOAD:
        load(module)
    # The preferred transport: the one a service of this SDK serves. Its class may name what serving imports.
    module, _colon, qualname = os.environ.get(TRANSPORTS_ENV, "").split(",")[0].strip().partition(":")
    found = load(module) if module else None
    for part in qualname.split(".") if found is not None and qualname else ():
        found = getattr(found, part, None)
    for extra in getattr(found, "serve_modules", ()):
        load(extra)


def _imported_here() -> set[str]:
    """The top-level modules imported since the interpreter started: a module of one of these names in a
    script's directory would be imported instead in a fresh interpreter, and not here."""
    return {name.partition(".")[0] for name in sys.modules} - _AT_START


def _shadowed(directory: str, names: set[str]) -> str | None:
    """A name of ``names`` that ``directory`` holds a module or package of (a fresh interpreter would
    import that one first), or None."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return None
    for entry in entries:
        stem = entry.partition(".")[0]
        if stem in names and (entry == stem or entry.endswith((".py", ".pyc", ".so", ".pyd"))):
            return stem
    return None


def _read_message() -> dict[str, object] | None:
    """The server's message (all of standard input, up to its end of file); None when there is none."""
    chunks = []
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    if not chunks:
        return None
    import json

    message = json.loads(b"".join(chunks))
    assert isinstance(message, dict)
    return message


def _redirect(out: str, err: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.dup2(target, fd)
        os.close(target)


def _run_script(argv: list[str]) -> None:
    """Run ``argv[1]`` as ``__main__`` with ``sys.argv = argv[1:]``, as ``python script args`` does."""
    import builtins
    import types
    from importlib.machinery import SourceFileLoader

    script = argv[1]
    path = os.path.abspath(script)
    try:
        with open(path, "rb") as fh:
            source = fh.read()
    except OSError as exc:
        print(f"{argv[0]}: can't open file {path!r}: [Errno {exc.errno}] {exc.strerror}", file=sys.stderr)
        sys.exit(2)
    sys.argv[:] = argv[1:]
    sys.path[0] = os.path.dirname(os.path.realpath(path))
    main = types.ModuleType("__main__")
    main.__dict__.update(
        __file__=path,
        __cached__=None,
        __builtins__=builtins,
        __loader__=SourceFileLoader("__main__", path),
        __spec__=None,
        __package__=None,
        __annotations__={},
    )
    sys.modules["__main__"] = main
    code = compile(source, path, "exec", dont_inherit=True)
    try:
        exec(code, main.__dict__)
    except Exception as exc:
        # As the interpreter reports an uncaught exception, without this module's frame.
        tb = exc.__traceback__
        exc = exc.with_traceback(tb.tb_next if tb is not None else None)
        sys.excepthook(type(exc), exc, exc.__traceback__)
        sys.exit(1)


def main() -> None:
    import builtins  # noqa: F401  # what the handover imports, before the shadowing check counts it
    import types  # noqa: F401
    from importlib import machinery  # noqa: F401

    _preload()
    message = _read_message()
    if message is None:
        return  # the server went away, or dropped this process
    argv = [str(a) for a in message["argv"]]  # type: ignore[attr-defined]
    env = {str(k): str(v) for k, v in message["env"].items()}  # type: ignore[attr-defined]
    _redirect(str(message["out"]), str(message["err"]))
    os.chdir(str(message["cwd"]))
    os.environ.clear()
    os.environ.update(env)
    directory = os.path.dirname(os.path.realpath(argv[1]))
    name = _shadowed(directory, _imported_here())
    if name is not None:
        # The script's directory has its own `name`: only a fresh interpreter imports that one.
        for value in (env.get("FLAMEPY_READY_FD"),):
            if value and value.isdigit():
                os.set_inheritable(int(value), True)
        os.execve(argv[0], argv, env)
    _run_script(argv)


if __name__ == "__main__":
    main()
