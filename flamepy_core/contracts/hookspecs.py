"""Every pluggy hook spec of flamepy, in one module (project name ``flamepy``, prefix ``flamepy_``).

A plugin is any module or object with functions marked ``@hookimpl``; it is found through the entry-point
groups ``flamepy.transports`` / ``flamepy.serializers`` or registered at run time with
``flamepy_core.plugins.get_registry().register(obj)``. Plugins import only ``hookimpl`` (and the spec
dataclasses) from :mod:`flamepy_core.contracts`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pluggy

from flamepy_core.contracts.serializer import SerializerSpec
from flamepy_core.contracts.transport import TransportSpec

PROJECT_NAME = "flamepy"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def flamepy_add_transports() -> Sequence[TransportSpec]:
    """Declare the transports this plugin provides. All results are collected.

    Keep it cheap: return :class:`TransportSpec` values whose ``load`` does the heavy imports.
    """
    raise NotImplementedError


@hookspec
def flamepy_add_serializers() -> Sequence[SerializerSpec]:
    """Declare the serializers this plugin provides. All results are collected."""
    raise NotImplementedError


@hookspec(firstresult=True)
def flamepy_choose_transport(scheme: str, candidates: Sequence[TransportSpec]) -> TransportSpec | None:
    """Pick the transport for an endpoint URL scheme among ``candidates`` (all that declare the scheme).

    First non-None result wins. The core's own rule (registered ``trylast``) takes the only candidate,
    or, when several plugins claim a scheme, the one registered last, so a plugin that wants to own a
    scheme someone else declares implements this hook.
    """
    raise NotImplementedError
