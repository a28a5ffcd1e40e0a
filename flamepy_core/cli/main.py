"""flmctl: register, inspect and drive applications and sessions; run the local server; list plugins.

Commands and flags follow Flame's flmctl (``list -a``, ``view -s ID``, ``register -f FILE``...). The
endpoint comes from ``--endpoint``, then ``FLAME_ENDPOINT``, then ``flame.yaml``; with none, the local
server for ``FLAME_HOME`` (started on first use).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from flamepy_core.cli.appspec import AppSpec, load_app_specs
from flamepy_core.cli.output import table, to_json, when
from flamepy_core.client import local
from flamepy_core.client.connection import Connection, connect_config
from flamepy_core.client.embedded import provide_inprocess_servers
from flamepy_core.client.session import Session
from flamepy_core.config import ClientConfig, resolve_config
from flamepy_core.contracts.errors import FlameError
from flamepy_core.contracts.transport import KeyPairTransport
from flamepy_core.engine import IN_PROCESS_SERVERS
from flamepy_core.engine.security import add_security_arguments, security_argv
from flamepy_core.model import ApplicationAttributes, ResourceRequirement, SessionAttributes, short_name
from flamepy_core.plugins import get_registry
from flamepy_core.serialization import application_environments


def _config(args: argparse.Namespace) -> ClientConfig:
    return resolve_config(endpoint=args.endpoint, config_file=args.config)


def _connection(args: argparse.Namespace) -> Connection:
    return connect_config(_config(args))


# -- plugins ----------------------------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    registry = get_registry()
    transports = [
        {
            "name": c.spec.name,
            "schemes": list(c.spec.schemes),
            "plugin": c.origin.plugin,
            "distribution": c.origin.distribution,
            "version": c.origin.version,
            "capabilities": c.spec.capabilities.as_dict(),
        }
        for c in registry.transports()
    ]
    serializers = [
        {
            "name": c.spec.name,
            "domain": c.spec.domain,
            "plugin": c.origin.plugin,
            "distribution": c.origin.distribution,
            "version": c.origin.version,
        }
        for c in registry.serializers()
    ]
    failures = [dataclasses.asdict(f) | {"traceback": None} for f in registry.failures]
    if args.output == "json":
        print(to_json({"transports": transports, "serializers": serializers, "failed": failures}))
        return 0

    def caps(c: dict[str, object]) -> str:
        flags = [k for k, v in c.items() if v is True]
        return f"max={c['max_message_size']} " + ",".join(flags)

    print("Transports:")
    print(
        table(
            ["NAME", "SCHEMES", "DISTRIBUTION", "VERSION", "CAPABILITIES"],
            [
                [t["name"], ",".join(t["schemes"]), t["distribution"], t["version"], caps(t["capabilities"])]  # type: ignore[arg-type]
                for t in transports
            ],
        )
    )
    print("\nSerializers:")
    print(
        table(
            ["NAME", "DOMAIN", "DISTRIBUTION", "VERSION"],
            [[s["name"], s["domain"], s["distribution"], s["version"]] for s in serializers],
        )
    )
    if failures:
        print("\nFailed to load:")
        print(
            table(
                ["ENTRY POINT", "GROUP", "DISTRIBUTION", "CAUSE"],
                [[f["entry_point"], f["group"], f["distribution"], f["cause"]] for f in failures],
            )
        )
    return 0


# -- applications -----------------------------------------------------------------------------------


def _attributes(spec: AppSpec) -> ApplicationAttributes:
    """The spec's attributes, with ``spec.serializer`` carried as ``FLAME_SERIALIZER`` in ``environments``.

    That variable is how the instance learns the serializer (the executor passes ``environments``) and how
    a client finds it (``get_application``); see :mod:`flamepy_core.serialization`.
    """
    attributes = dict(spec.attributes)
    if spec.serializer is not None:
        attributes["environments"] = application_environments(
            attributes.get("environments"), spec.serializer, source=spec.source
        )
    return ApplicationAttributes(**attributes)


def cmd_register(args: argparse.Namespace) -> int:
    specs = load_app_specs(args.file)
    attributes = [_attributes(spec) for spec in specs]  # every document is checked before any is registered
    conn = _connection(args)
    for spec, attrs in zip(specs, attributes, strict=True):
        conn.register_application(spec.name, attrs)
        print(f"Application {spec.name} was registered.")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    specs = load_app_specs(args.application)
    attributes = [_attributes(spec) for spec in specs]
    conn = _connection(args)
    for spec, attrs in zip(specs, attributes, strict=True):
        conn.update_application(spec.name, attrs)
        print(f"Application {spec.name} was updated.")
    return 0


def cmd_unregister(args: argparse.Namespace) -> int:
    _connection(args).unregister_application(args.application)
    print(f"Application {args.application} was unregistered.")
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    attrs = SessionAttributes(
        application=args.application,
        id=args.session or short_name(args.application),
        resreq=ResourceRequirement.from_string(args.resreq) if args.resreq else None,
    )
    session = _connection(args).create_session(attrs, priority=args.priority)
    print(f"Session {session.id} was created.")
    return 0


def cmd_close(args: argparse.Namespace) -> int:
    _connection(args).close_session(args.session)
    print(f"Session {args.session} was closed.")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    conn = _connection(args)
    if args.session:
        sessions = conn.list_sessions()
        if args.output == "json":
            print(to_json([_session_dict(s) for s in sessions]))
            return 0
        print(
            table(
                ["ID", "State", "App", "Pending", "Running", "Succeed", "Failed", "Created"],
                [
                    [
                        s.id,
                        s.state.name.capitalize(),
                        s.application,
                        s.pending,
                        s.running,
                        s.succeed,
                        s.failed,
                        when(s.creation_time),
                    ]
                    for s in sessions
                ],
            )
        )
        return 0
    if args.executor or args.node:
        items = conn.list_executors() if args.executor else conn.list_nodes()
        print(table(["ID", "State"], [[i.metadata.id, i.status.state] for i in items]))
        return 0
    apps = conn.list_applications()
    if args.output == "json":
        print(to_json([dataclasses.asdict(a) for a in apps]))
        return 0
    print(
        table(
            ["Name", "State", "Shim", "Tags", "Created", "Command"],
            [
                [
                    a.name,
                    a.state.name.capitalize(),
                    a.shim.name.capitalize() if a.shim is not None else "Host",
                    ",".join(a.labels or []),
                    when(a.creation_time),
                    " ".join([a.command or "", *(a.arguments or [])]).strip(),
                ]
                for a in apps
            ],
        )
    )
    return 0


def _session_dict(s: Session) -> dict[str, object]:
    fields = (
        "id",
        "application",
        "state",
        "creation_time",
        "completion_time",
        "pending",
        "running",
        "succeed",
        "failed",
        "cancelled",
    )
    data: dict[str, object] = {f: getattr(s, f) for f in fields}
    data["events"] = [dataclasses.asdict(e) for e in s.events]
    return data


def cmd_view(args: argparse.Namespace) -> int:
    conn = _connection(args)
    if args.application and not args.session:
        app = conn.get_application(args.application)
        if app is None:
            print(f"flmctl: application {args.application} not found", file=sys.stderr)
            return 1
        data = dataclasses.asdict(app)
        if args.output == "json":
            print(to_json(data))
        else:
            for key, value in data.items():
                shown = when(value) if key == "creation_time" else getattr(value, "name", value)
                print(f"{key + ':':<20}{shown}")
        return 0
    if args.session and args.task:
        task = conn.get_task(args.session, args.task)
        data = dataclasses.asdict(task)
        if args.output == "json":
            print(to_json(data))
        else:
            for key in ("id", "session_id", "state", "creation_time", "completion_time"):
                value = data[key]
                print(f"{key + ':':<18}{when(value) if key.endswith('time') else getattr(value, 'name', value)}")
            for key in ("input", "output"):
                print(f"{key + ':':<18}{'-' if data[key] is None else f'{len(data[key])} bytes'}")
            for event in task.events or []:
                print(f"  event {event.code} {when(event.creation_time)} {event.message or ''}")
        return 0
    if args.session:
        session = conn.get_session(args.session)
        data = _session_dict(session)
        if args.output == "json":
            print(to_json(data))
            return 0
        print(f"Session:      {session.id}")
        print(f"Application:  {session.application}")
        print(f"State:        {session.state.name.capitalize()}")
        print(f"Created:      {when(session.creation_time)}")
        print(f"Completed:    {when(session.completion_time)}")
        print(
            f"Tasks:        pending {session.pending}, running {session.running}, "
            f"succeed {session.succeed}, failed {session.failed}, cancelled {session.cancelled}"
        )
        if session.events:
            print("Events:")
            for event in session.events:
                print(f"  {event.code:<6}{when(event.creation_time)}  {event.message or ''}")
        return 0
    print("flmctl view: unsupported parameters; use -a APP, -s SESSION or -s SESSION -t TASK", file=sys.stderr)
    return 2


# -- server -----------------------------------------------------------------------------------------


def cmd_server(args: argparse.Namespace) -> int:
    config = _config(args)
    home = config.home
    registry = get_registry()
    if args.server_command == "status":
        info = local.live_server(home)
        if not info:
            print(f"no flamepy server is running for {home}")
            return 3
        running = f" with {info['transport']}" if info.get("transport") else ""
        print(f"flamepy server for {home}: pid {info['pid']}, listening on {info['endpoint']}{running}")
        return 0
    if args.server_command == "stop":
        stopped = local.stop_server(home)
        print(f"stopped the flamepy server for {home}" if stopped else f"no flamepy server was running for {home}")
        return 0
    # start
    info = local.live_server(home)
    if info:
        print(f"a flamepy server is already running for {home}: pid {info['pid']}, {info['endpoint']}")
        return 0 if not args.listen or args.listen == info["endpoint"] else 1
    transport: str | None = args.transport or config.transport
    if transport and not args.listen:
        # An unknown name, or one that cannot listen privately in FLAME_HOME: refused before anything starts.
        purpose = "for the server's default listen endpoint (a private socket in FLAME_HOME)"
        registry.require(registry.transport_spec(transport), "local_schemes", purpose)
    argv: list[str] = []
    if args.listen:
        argv += ["--listen", args.listen]
    if args.idle_exit is not None:
        argv += ["--idle-exit", str(args.idle_exit)]
    argv += security_argv(args, registry)
    if args.foreground:
        from flamepy_core.engine.__main__ import main as serve

        return serve(["--home", str(home), *(["--transport", transport] if transport else []), *argv])
    info = local.start_server(home, transport=transport, extra_argv=argv)
    where = f" with {info['transport']}" if info.get("transport") else ""
    print(f"started a flamepy server for {home}: pid {info['pid']}, listening on {info['endpoint']}{where}")
    return 0


# -- keys -------------------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    """Make a key pair with a transport that can (CURVE for ZeroMQ): ``NAME.key`` and ``NAME.key_secret``."""
    registry = get_registry()
    makers = [c for c in registry.transports() if isinstance(registry.create_transport(c), KeyPairTransport)]
    if args.transport:
        chosen = registry.transport_spec(args.transport)
        if chosen not in makers:
            able = ", ".join(c.spec.name for c in makers) or "none is installed"
            print(f"flmctl keygen: transport '{args.transport}' makes no key pairs; these do: {able}", file=sys.stderr)
            return 2
    elif len(makers) == 1:
        chosen = makers[0]
    else:
        able = ", ".join(c.spec.name for c in makers) or "none is installed"
        print(f"flmctl keygen: choose the transport with --transport ({able})", file=sys.stderr)
        return 2
    transport = registry.create_transport(chosen)
    assert isinstance(transport, KeyPairTransport)
    directory = Path(args.dir).expanduser().resolve()
    try:
        public, secret = transport.make_key_pair(str(directory), args.name)
    except FileExistsError as exc:
        print(f"flmctl keygen: {exc}", file=sys.stderr)
        return 1
    security = chosen.spec.capabilities.security
    mechanism = security.mechanism if security is not None else chosen.spec.name
    print(f"{mechanism} key pair '{args.name}' for transport {chosen.spec.name}:")
    print(f"  public key  {public}   (hand it out: servers list it to admit this key, clients name a server's)")
    print(f"  key pair    {secret}   (keep it private: readable by you only)")
    return 0


# -- parser -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flmctl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=None, help="flame.yaml to use (default: $FLAME_HOME/flame.yaml)")
    parser.add_argument(
        "--endpoint", default=None, help="server endpoint URL (overrides FLAME_ENDPOINT and flame.yaml)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        return p

    p = add("plugins", cmd_plugins, "list installed transports and serializers, and plugins that failed to load")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")

    p = add("register", cmd_register, "register the applications described in a YAML file")
    p.add_argument("-f", "--file", required=True, type=Path)
    p = add("update", cmd_update, "update applications from a YAML file (no open sessions allowed)")
    p.add_argument("-a", "--application", required=True, type=Path, metavar="FILE")
    p = add("unregister", cmd_unregister, "unregister an application")
    p.add_argument("-a", "--application", required=True)

    p = add("list", cmd_list, "list applications, sessions, executors or nodes")
    group = p.add_mutually_exclusive_group()
    group.add_argument("-a", "--application", action="store_true", help="applications (the default)")
    group.add_argument("-s", "--session", action="store_true", help="sessions")
    group.add_argument("-e", "--executor", action="store_true", help="executors")
    group.add_argument("-n", "--node", action="store_true", help="nodes")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")

    p = add("view", cmd_view, "show one application, session or task")
    p.add_argument("-a", "--application")
    p.add_argument("-s", "--session")
    p.add_argument("-t", "--task")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")

    p = add("create", cmd_create, "create a session of an application")
    p.add_argument("-a", "--application", required=True)
    p.add_argument("-i", "--session", default=None, help="session id (default: <app>-<random>)")
    p.add_argument("-r", "--resreq", default=None, help='resources per instance, e.g. "cpu=2,mem=4g,gpu=0"')
    p.add_argument("-p", "--priority", type=int, default=0)

    p = add("close", cmd_close, "close a session")
    p.add_argument("-s", "--session", required=True)

    p = add("server", cmd_server, "start, stop or inspect the local server of FLAME_HOME")
    server_sub = p.add_subparsers(dest="server_command", required=True, metavar="ACTION")
    start = server_sub.add_parser("start", help="start the server (in the background unless --foreground)")
    start.add_argument("--listen", default=None, help="endpoint URL to listen on (default: a socket in FLAME_HOME)")
    start.add_argument("--foreground", action="store_true")
    start.add_argument(
        "--transport", default=None, help="the runtime's transport; default: FLAME_TRANSPORT / flame.yaml"
    )
    start.add_argument("--idle-exit", type=float, default=None, help="exit after N idle seconds (0 = never)")
    add_security_arguments(start, get_registry())
    server_sub.add_parser("stop", help="stop the server")
    server_sub.add_parser("status", help="say whether a server runs, and where")

    p = add("keygen", cmd_keygen, "make a key pair for a transport's authentication (CURVE for ZeroMQ)")
    p.add_argument("name", help="the pair's name: writes NAME.key (public) and NAME.key_secret (private)")
    p.add_argument("--dir", default=".", help="where to write them (default: the current directory)")
    p.add_argument("--transport", default=None, help="the transport whose keys to make (default: the only one able)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    provide_inprocess_servers(IN_PROCESS_SERVERS)  # flmctl assembles the process: in-process endpoints get the engine's
    try:
        return int(args.func(args))
    except FlameError as exc:
        print(f"flmctl: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:
        print(f"flmctl: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
