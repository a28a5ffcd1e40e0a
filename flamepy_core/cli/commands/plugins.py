"""``flmctl plugins``: the installed transports and serializers, and the plugins that failed to load."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from flamepy_core.cli.common import SubParsers, add_command, add_output_flag
from flamepy_core.cli.output import Column, field, render


def add_parser(sub: SubParsers) -> None:
    p = add_command(
        sub,
        "plugins",
        run,
        "list installed transports and serializers, and plugins that failed to load",
        [
            ("flmctl plugins", "a table of transports, serializers and load failures"),
            ("flmctl plugins -o json", "every capability spelled out, for scripts"),
        ],
    )
    add_output_flag(p)


def _caps(capabilities: dict[str, Any]) -> str:
    flags = [k for k, v in capabilities.items() if v is True]
    extra = [
        f"{key}={','.join(value) if isinstance(value, list) else value}"
        for key in ("local_schemes", "bare_path_scheme", "local_default_rank", "security")
        if (value := capabilities.get(key))
    ]
    return " ".join([f"max={capabilities['max_message_size']}", *extra, ",".join(flags)])


TRANSPORT_COLUMNS = (
    Column("NAME", field("name")),
    Column("SCHEMES", lambda t: ",".join(t["schemes"])),
    Column("DISTRIBUTION", field("distribution")),
    Column("VERSION", field("version")),
    Column("CAPABILITIES", lambda t: _caps(t["capabilities"])),
    Column("PLUGIN", field("plugin"), wide=True),
)
SERIALIZER_COLUMNS = (
    Column("NAME", field("name")),
    Column("DOMAIN", field("domain")),
    Column("DISTRIBUTION", field("distribution")),
    Column("VERSION", field("version")),
    Column("PLUGIN", field("plugin"), wide=True),
)
FAILURE_COLUMNS = (
    Column("ENTRY POINT", field("entry_point")),
    Column("GROUP", field("group")),
    Column("DISTRIBUTION", field("distribution")),
    Column("CAUSE", field("cause")),
)


def run(args: argparse.Namespace) -> int:
    from flamepy_core.plugins import get_registry

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
    if args.output in ("json", "yaml"):
        print(render({"transports": transports, "serializers": serializers, "failed": failures}, args.output))
        return 0
    print("Transports:")
    print(render(transports, args.output, TRANSPORT_COLUMNS))
    print("\nSerializers:")
    print(render(serializers, args.output, SERIALIZER_COLUMNS))
    if failures:
        print("\nFailed to load:")
        print(render(failures, args.output, FAILURE_COLUMNS))
    return 0
