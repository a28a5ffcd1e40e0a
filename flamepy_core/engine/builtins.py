"""Flame's built-in applications, registered on a fresh server: ``flmrun``, ``flmexec``, ``flmping``.

A Flame cluster always has them; programs list them, use ``flmrun`` as the ``Runner`` template and
``flmexec`` behind ``Sandbox``. Here they are service processes written with this SDK and run by the
interpreter the runtime chooses (``${FLAME_PYTHON}``, set for every instance by
:mod:`flamepy_core.engine.installer`), so no external binary and no ``uv`` is needed.

Each is registered once per store: the names registered are remembered in the table
``builtin_applications``, so a restart never duplicates them and a user may unregister or replace one
for good. A built-in that is still exactly as registered is brought up to date when a newer flamepy
defines it differently (and has no open session).
"""

from __future__ import annotations

import json
import logging

from flamepy_core.apps.flmexec import INPUT_SCHEMA, OUTPUT_SCHEMA
from flamepy_core.apps.python_runtime import FLAME_PYTHON
from flamepy_core.contracts.errors import FlameError
from flamepy_core.engine.state import Engine
from flamepy_core.wire.proto import types_pb2 as pb

__all__ = ["BUILTIN_NAMES", "builtin_specs", "seed_builtin_applications"]

log = logging.getLogger(__name__)

BUILTIN_NAMES = ("flmexec", "flmping", "flmrun")
_TABLE = "builtin_applications"
_PYTHON = "${" + FLAME_PYTHON + "}"


def builtin_specs() -> dict[str, pb.ApplicationSpec]:
    """The specs of the built-in applications, by name."""
    flmrun = pb.ApplicationSpec(
        shim=pb.Shim.Host,
        description="Runner template: the generic service behind flamepy.runner (python -m flamepy.runner.runpy)",
        command=_PYTHON,
        arguments=["-m", "flamepy.runner.runpy"],
        installer="python",
    )
    flmexec = pb.ApplicationSpec(
        shim=pb.Shim.Host,
        description="Script execution: runs a Python or shell snippet and answers its stdout (flamepy.tools.Sandbox)",
        command=_PYTHON,
        arguments=["-m", "flamepy_core.apps.flmexec"],
    )
    flmexec.schema.input = json.dumps(INPUT_SCHEMA)
    flmexec.schema.output = json.dumps(OUTPUT_SCHEMA)
    flmping = pb.ApplicationSpec(
        shim=pb.Shim.Host,
        description='Ping: answers what it gets ({"duration": ms, "memory": bytes} as Flame\'s flmping)',
        command=_PYTHON,
        arguments=["-m", "flamepy_core.apps.flmping"],
    )
    return {"flmexec": flmexec, "flmping": flmping, "flmrun": flmrun}


def seed_builtin_applications(engine: Engine) -> list[str]:
    """Register the built-ins this store has never had; refresh untouched ones. Returns what changed."""
    store = engine.store
    store.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE} (name TEXT PRIMARY KEY, spec BLOB NOT NULL)")
    store.flush()
    seeded = {name: bytes(spec) for name, spec in store.query(f"SELECT name, spec FROM {_TABLE}")}
    changed = []
    for name, spec in builtin_specs().items():
        wanted = spec.SerializeToString(deterministic=True)
        try:
            if name not in seeded:
                try:
                    engine.register_application(name, spec)
                    changed.append(name)
                except FlameError as exc:  # a user's application of that name came first: keep it
                    log.info("built-in application %s not registered: %s", name, exc.message)
            elif seeded[name] != wanted and _unchanged_since_seeded(engine, name, seeded[name]):
                engine.update_application(name, spec)
                changed.append(name)
            else:
                continue
        except FlameError as exc:
            log.warning("built-in application %s left as it is: %s", name, exc.message)
            continue
        store.execute(f"INSERT OR REPLACE INTO {_TABLE} (name, spec) VALUES (?, ?)", name, wanted)
    if changed:
        store.flush()
        log.info("built-in applications registered or refreshed: %s", ", ".join(changed))
    return changed


def _unchanged_since_seeded(engine: Engine, name: str, seeded: bytes) -> bool:
    """True when the application is exactly the built-in as it was registered (the user did not touch it)."""
    try:
        app = engine.get_application(name)
    except FlameError:
        return False  # unregistered by the user: leave it gone
    spec = pb.ApplicationSpec()
    spec.CopyFrom(app.spec)
    before = pb.ApplicationSpec.FromString(seeded)
    for field in ("max_instances", "delay_release"):  # filled in by the server at registration
        if not before.HasField(field):
            spec.ClearField(field)
    return spec.SerializeToString(deterministic=True) == seeded
