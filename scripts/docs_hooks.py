"""MkDocs hooks: pages that are generated from the code at build time, so they cannot go stale.

A page holds a marker comment; the build replaces it with text made from the installed package:

* ``<!-- generated: flmctl reference -->``: every flmctl command, flag and example, from its parser.
* ``<!-- generated: capability table -->``: the bundled transports and serializers, from the plugin
  registry (what each declares, as ``flmctl plugins`` reads it).
* ``<!-- generated: flamepy-conformance flags -->``: the conformance command's flags, from its parser.
"""

from __future__ import annotations

from typing import Any


def cli_reference() -> str:
    from flamepy_core.cli.main import build_parser
    from flamepy_core.cli.reference import markdown

    return markdown(build_parser())


def _mark(value: bool) -> str:
    return "yes" if value else "-"


def capability_table() -> str:
    from flamepy_core.plugins import get_registry

    registry = get_registry()
    bundled = [c for c in registry.transports() if c.origin.distribution == "flamepy"]
    flags = (
        "streaming",
        "cross_process",
        "tls",
        "auth",
        "restart_same_endpoint",
        "deferred_replies",
        "deferred_streams",
        "async_calls",
        "async_streams",
    )
    lines = [
        "| transport | schemes | largest message | " + " | ".join(f"`{f}`" for f in flags) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in flags) + " |",
    ]
    for choice in bundled:
        caps = choice.spec.capabilities.as_dict()
        schemes = ", ".join(f"`{s}`" for s in choice.spec.schemes)
        size = f"{caps['max_message_size'] // (1 << 20)} MiB"
        marks = " | ".join(_mark(bool(caps[f])) for f in flags)
        lines.append(f"| `{choice.spec.name}` | {schemes} | {size} | {marks} |")
    lines += ["", "| serializer | domain | what it carries |", "| --- | --- | --- |"]
    for choice in registry.serializers():
        if choice.origin.distribution == "flamepy":
            lines.append(f"| `{choice.spec.name}` | `{choice.spec.domain}` | {choice.spec.description} |")
    return "\n".join(lines) + "\n"


def conformance_flags() -> str:
    from flamepy_conformance.command import _parser

    from flamepy_core.cli.reference import flags_table

    return flags_table(_parser())


GENERATORS = {
    "<!-- generated: flmctl reference -->": cli_reference,
    "<!-- generated: capability table -->": capability_table,
    "<!-- generated: flamepy-conformance flags -->": conformance_flags,
}


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    for marker, generate in GENERATORS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown
