"""``flmctl register``, ``update`` and ``unregister``: applications from Flame's application YAML."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from flamepy_core.cli.appspec import AppSpec, load_app_specs
from flamepy_core.cli.common import SubParsers, add_command, config, connection
from flamepy_core.config import ENV_TASK_TIMEOUT, ClientConfig, parse_task_timeout
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.model import ApplicationAttributes
from flamepy_core.plugins import get_registry
from flamepy_core.serialization import application_environments


def add_parser(sub: SubParsers) -> None:
    p = add_command(
        sub,
        "register",
        run_register,
        "register the applications described in a YAML file",
        [
            ("flmctl register --file echo-app.yaml", "register echo-app from its folder"),
            ("flmctl register -f apps.yaml", "register every application of a multi-document file"),
        ],
        description=(
            "Register every application described in FILE (Flame's application YAML, one application per\n"
            "document). The whole file is checked before anything is registered. Against the local server,\n"
            "a spec.command or spec.working_directory that does not exist here is reported with what to change."
        ),
    )
    p.add_argument(
        "-f", "--file", required=True, type=Path, metavar="FILE", help="the application YAML (one or more documents)"
    )
    p = add_command(
        sub,
        "update",
        run_update,
        "update applications from a YAML file (no open sessions allowed)",
        [("flmctl update -a echo-app.yaml", "replace echo-app's spec with the file's")],
    )
    p.add_argument(
        "-a",
        "--application",
        required=True,
        type=Path,
        metavar="FILE",
        help="the application YAML (a file, not a name, as in Flame's flmctl)",
    )
    p = add_command(
        sub,
        "unregister",
        run_unregister,
        "unregister an application and its closed sessions",
        [("flmctl unregister -a echo-app", "remove echo-app (refused while it has open sessions)")],
    )
    p.add_argument("-a", "--application", required=True, metavar="NAME", help="the application's name")


def attributes(spec: AppSpec) -> ApplicationAttributes:
    """The spec's attributes, with ``spec.serializer`` carried as ``FLAME_SERIALIZER`` in ``environments``
    (and ``spec.task_timeout`` as ``FLAMEPY_TASK_TIMEOUT``).

    That variable is how the instance learns the serializer (the executor passes ``environments``) and how
    a client finds it (``get_application``); see :mod:`flamepy_core.serialization`.
    """
    values = dict(spec.attributes)
    if spec.serializer is not None:
        values["environments"] = application_environments(
            values.get("environments"), spec.serializer, source=spec.source
        )
    if spec.task_timeout is not None:
        environments = dict(values.get("environments") or {})
        already = environments.get(ENV_TASK_TIMEOUT)
        if already is not None and parse_task_timeout(already, spec.source) != spec.task_timeout:
            raise FlameError(
                FlameErrorCode.INVALID_ARGUMENT,
                f"{spec.source}: task_timeout {spec.task_timeout:g} contradicts environments "
                f"{ENV_TASK_TIMEOUT}={already!r}; set one of them (the timeout is stored as {ENV_TASK_TIMEOUT})",
            )
        seconds = spec.task_timeout
        environments[ENV_TASK_TIMEOUT] = str(int(seconds)) if seconds.is_integer() else repr(seconds)
        values["environments"] = environments
    return ApplicationAttributes(**values)


def _is_local(cfg: ClientConfig) -> bool:
    """Whether instances run on this machine (the local server, an in-process one, or a server on a local
    socket), so paths can be checked."""
    if cfg.endpoint is None:
        return True
    registry = get_registry()
    url = registry.endpoint_url(cfg.endpoint)
    capabilities = registry.transport_spec_for_endpoint(url).spec.capabilities
    return capabilities.in_process or url.partition("://")[0].lower() in capabilities.local_schemes


def missing_paths(spec: AppSpec, file: Path) -> list[str]:
    """What in ``spec`` points at nothing on this machine, each with the change that fixes it.

    The server starts instances with ``command`` in ``working_directory``; when either is missing every
    session fails at its first task. Flame accepts such a spec (the paths may exist on its nodes), so this
    is a warning, given at registration where the fix is one edit away.
    """
    problems: list[str] = []
    values = spec.attributes
    workdir = values.get("working_directory")
    update = f"then run `flmctl update -a {file}`"
    if workdir and "$" not in workdir and not Path(workdir).is_dir():
        problems.append(
            f"spec.working_directory {workdir} does not exist on this machine; set it to the folder that holds "
            f"the service (a relative path such as '.' is read from the YAML file's folder), {update}"
        )
    command = values.get("command")
    if command and "$" not in command:
        cwd = Path(workdir) if workdir else Path.cwd()
        found = (cwd / command).exists() if os.sep in command else shutil.which(command) is not None
        if not found:
            problems.append(
                f"spec.command {command!r} was not found (looked in PATH and {cwd}); set it to an interpreter "
                f"that exists here, such as 'python' (found on the server's PATH) or {sys.executable}, {update}"
            )
    return problems


def run_register(args: argparse.Namespace) -> int:
    specs = load_app_specs(args.file)
    attrs = [attributes(spec) for spec in specs]  # every document is checked before any is registered
    cfg = config(args)
    conn = connection(args)
    for spec, attr in zip(specs, attrs, strict=True):
        try:
            conn.register_application(spec.name, attr)
        except FlameError as exc:
            if exc.code == FlameErrorCode.ALREADY_EXISTS:
                raise FlameError(
                    exc.code,
                    f"application {spec.name} already exists; to change it, run "
                    f"`flmctl update -a {args.file}` (or `flmctl unregister -a {spec.name}` first)",
                ) from exc
            raise
        print(f"Application {spec.name} was registered.")
        if _is_local(cfg):
            for problem in missing_paths(spec, args.file):
                print(f"flmctl: warning: application {spec.name}: {problem}", file=sys.stderr)
    return 0


def run_update(args: argparse.Namespace) -> int:
    specs = load_app_specs(args.application)
    attrs = [attributes(spec) for spec in specs]
    cfg = config(args)
    conn = connection(args)
    for spec, attr in zip(specs, attrs, strict=True):
        conn.update_application(spec.name, attr)
        print(f"Application {spec.name} was updated.")
        if _is_local(cfg):
            for problem in missing_paths(spec, args.application):
                print(f"flmctl: warning: application {spec.name}: {problem}", file=sys.stderr)
    return 0


def run_unregister(args: argparse.Namespace) -> int:
    connection(args).unregister_application(args.application)
    print(f"Application {args.application} was unregistered.")
    return 0
