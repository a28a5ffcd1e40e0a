"""The plugin registry: plugins declared once on their class, the older hook modules, and the choices the
runtime makes by capability (local default, bare socket paths, what a role needs)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import pytest

from flamepy_core.config import RuntimeSettings
from flamepy_core.contracts import (
    FlameError,
    FlameErrorCode,
    Handler,
    TransportCapabilities,
    TransportSpec,
    hookimpl,
)
from flamepy_core.plugin_classes import MAX_MESSAGE_SIZE_ENV, build_transport_of_class
from flamepy_core.plugins import PluginRegistry, local_endpoint, transport_spec_of

CAPS = TransportCapabilities(max_message_size=1024)


class _Declared:
    """A transport class that declares itself; building it records the options it got."""

    name: ClassVar[str] = "declared"
    schemes: ClassVar[tuple[str, ...]] = ("decl", "decl+local")
    capabilities: TransportCapabilities = dataclasses.replace(CAPS, local_schemes=("decl+local",), local_default_rank=5)
    options: ClassVar[frozenset[str]] = frozenset({"max_message_size", "colour"})
    requires: ClassVar[tuple[str, ...]] = ("declared-dist",)
    description: ClassVar[str] = "a test transport"

    def __init__(self, **options: Any) -> None:
        self.options_given = options

    def connect(self, endpoint: str) -> Any:
        raise NotImplementedError

    def serve(self, endpoint: str, handlers: Mapping[str, Handler]) -> Any:
        raise NotImplementedError

    def local_endpoint(self, directory: str, name: str) -> str:
        return f"decl+local://{directory}/{name}.sock"


def _declared(name: str, rank: int, **caps: Any) -> type[_Declared]:
    capabilities = dataclasses.replace(CAPS, local_schemes=(f"{name}+local",), local_default_rank=rank, **caps)
    return type(
        name.title(), (_Declared,), {"name": name, "schemes": (name, f"{name}+local"), "capabilities": capabilities}
    )


class _OldStyle:
    """A plugin written the older way: a hook implementation returning specs."""

    @hookimpl
    def flamepy_add_transports(self) -> Sequence[TransportSpec]:
        return [TransportSpec(name="old", schemes=("old",), capabilities=CAPS, load=lambda: _Declared)]


def registry(*plugins: object) -> PluginRegistry:
    reg = PluginRegistry(autoload=False)
    for plugin in plugins:
        reg.register(plugin)
    return reg


def test_a_class_declares_itself_once() -> None:
    spec = transport_spec_of(_Declared)
    assert (spec.name, spec.schemes, spec.capabilities, spec.options) == (
        "declared",
        ("decl", "decl+local"),
        _Declared.capabilities,
        frozenset({"max_message_size", "colour"}),
    )
    assert spec.requires == ("declared-dist",) and spec.description == "a test transport"
    assert spec.load() is _Declared


def test_a_registered_class_is_built_with_its_options_and_unregistered_by_the_class() -> None:
    reg = registry(_Declared)
    built = reg.transport("decl://x", colour="blue")
    assert isinstance(built, _Declared) and built.options_given == {"colour": "blue"}
    with pytest.raises(FlameError) as refused:
        reg.transport("declared", size=1)
    assert refused.value.code == FlameErrorCode.INVALID_ARGUMENT and "'size'" in refused.value.message
    reg.unregister(_Declared)
    assert [c.spec.name for c in reg.transports()] == []


def test_a_class_that_lacks_its_declaration_is_named() -> None:
    class Nameless:
        schemes = ("x",)

    with pytest.raises(TypeError) as err:
        transport_spec_of(Nameless)
    assert "Nameless" in str(err.value) and "`name`" in str(err.value) and "`capabilities`" in str(err.value)


def test_an_older_hook_plugin_still_loads_beside_classes() -> None:
    reg = registry(_OldStyle(), _Declared)
    assert sorted(c.spec.name for c in reg.transports()) == ["declared", "old"]
    assert isinstance(reg.transport("old"), _Declared)


def test_the_local_default_is_the_highest_rank_with_local_schemes() -> None:
    low, high = _declared("low", 1), _declared("high", 9)
    in_process = _declared("mem", 50, cross_process=False, in_process=True)  # never the shared server's
    unranked = _declared("zero", 0)
    assert registry(low, high, in_process, unranked).local_default().spec.name == "high"
    assert registry(high, low).local_default().spec.name == "high"
    with pytest.raises(FlameError) as none:
        registry(unranked).local_default()
    assert none.value.code == FlameErrorCode.INVALID_CONFIG and "zero" in none.value.message


def test_a_missing_capability_is_refused_naming_the_transport_and_what_to_choose() -> None:
    remote = type("Remote", (_Declared,), {"name": "remote", "schemes": ("remote",), "capabilities": CAPS})
    reg = registry(remote, _declared("able", 3))
    with pytest.raises(FlameError) as refused:
        reg.require(reg.transport_spec("remote"), "local_schemes", "for the server's default listen endpoint")
    message = refused.value.message
    assert "'remote'" in message and "'local_schemes'" in message and "able" in message, message


def test_a_bare_path_means_the_transport_that_declares_bare_path_scheme() -> None:
    flame = _declared("flamish", 2, bare_path_scheme="flamish+local")
    reg = registry(_declared("other", 5), flame)
    assert reg.endpoint_url("/run/i1.sock") == "flamish+local:///run/i1.sock"
    assert reg.transport_spec_for_endpoint("/run/i1.sock").spec.name == "flamish"
    assert reg.endpoint_url("other://h:1") == "other://h:1"
    with pytest.raises(FlameError) as none:
        registry(_declared("other", 5)).endpoint_url("/run/i1.sock")
    assert "bare_path_scheme" in none.value.message


def test_unknown_names_get_the_installed_list_and_a_near_match() -> None:
    reg = registry(_Declared)
    with pytest.raises(FlameError) as unknown:
        reg.transport_spec("declard")
    message = unknown.value.message
    assert "did you mean 'declared'" in message and "Installed transports: declared (decl, decl+local)" in message


def test_local_endpoint_needs_the_method() -> None:
    assert local_endpoint(_Declared(), "/d", "flame") == "decl+local:///d/flame.sock"

    class NoLocal:
        name = "nolocal"
        schemes = ("n",)
        capabilities = CAPS

        def connect(self, endpoint: str) -> Any: ...

        def serve(self, endpoint: str, handlers: Mapping[str, Handler]) -> Any: ...

    with pytest.raises(FlameError) as refused:
        local_endpoint(NoLocal(), "/d", "flame")  # type: ignore[arg-type]
    assert "nolocal" in refused.value.message and "local_endpoint" in refused.value.message


def test_shared_transports_are_owned_by_the_registry_and_keyed_by_identity() -> None:
    reg = registry(_Declared)
    first = reg.shared_transport("decl://a", {"max_message_size": 10})
    assert reg.shared_transport("decl://b") is first  # options only apply to the first build
    keyed = reg.shared_transport("decl://a", identity={"colour": "red"})
    assert keyed is not first and reg.shared_transport("decl://c", identity={"colour": "red"}) is keyed
    assert registry(_Declared).shared_transport("decl://a") is not first  # another registry, its own


_BY_CLASS: dict[str, Callable[[str, str], tuple[Any, str] | None]] = {
    "registry": PluginRegistry(autoload=False).transport_of_class,  # nothing registered: only the class answers
    "no registry": build_transport_of_class,  # what a service process uses: no pluggy, no scan
}


@pytest.mark.parametrize("how", sorted(_BY_CLASS))
def test_a_transport_named_by_its_class_is_built_without_a_scan_when_it_owns_the_endpoint(
    tmp_path: Any, how: str
) -> None:
    """What a service process does with ``FLAMEPY_INSTANCE_TRANSPORTS``: the class the server named serves
    the endpoint if its schemes own it; anything else (another scheme, a class that does not import) is
    None, so the caller falls back to the scan rather than serving with the wrong transport."""
    from flamepy_transports.zmq.plugin import ZmqTransport

    of_class = _BY_CLASS[how]
    endpoint = f"zmq+ipc://{tmp_path}/i.sock"
    found = of_class("flamepy_transports.zmq.plugin:ZmqTransport", endpoint)
    assert found is not None
    transport, url = found
    assert type(transport) is ZmqTransport and url == endpoint
    assert of_class("flamepy_transports.zmq.plugin:ZmqTransport", "grpc+unix:///x.sock") is None
    assert of_class("flamepy_transports.zmq.plugin:NoSuchTransport", endpoint) is None
    assert of_class("no_such_module_here:ZmqTransport", endpoint) is None
    grpc_class = "flamepy_transports.grpc.plugin:GrpcTransport"
    bare = of_class(grpc_class, f"{tmp_path}/g.sock")
    assert bare is not None and bare[1] == f"unix://{tmp_path}/g.sock", "a bare path takes bare_path_scheme"
    assert of_class("flamepy_transports.zmq.plugin:ZmqTransport", f"{tmp_path}/z.sock") is None


@pytest.mark.parametrize("how", sorted(_BY_CLASS))
def test_a_transport_built_from_its_class_gets_the_configured_message_size(
    tmp_path: Any, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``FLAME_MAX_MESSAGE_SIZE`` reaches a transport built from its class, as one the registry chose: the
    server, its instances and its clients agree on the limit. A bad value is refused, naming it."""
    assert RuntimeSettings.env_var("max_message_size") == MAX_MESSAGE_SIZE_ENV
    endpoint = f"zmq+ipc://{tmp_path}/i.sock"
    monkeypatch.setenv(MAX_MESSAGE_SIZE_ENV, "1234567")
    found = _BY_CLASS[how]("flamepy_transports.zmq.plugin:ZmqTransport", endpoint)
    assert found is not None and found[0].capabilities.max_message_size == 1234567
    monkeypatch.setenv(MAX_MESSAGE_SIZE_ENV, "a lot")
    with pytest.raises(FlameError, match="a lot"):
        _BY_CLASS[how]("flamepy_transports.zmq.plugin:ZmqTransport", endpoint)


def test_the_instance_link_is_the_highest_instance_link_rank_else_the_local_default() -> None:
    """Services written with this SDK are linked by the transport ranked for it; with none ranked, by the
    local default (a third party's transport set may have no such transport)."""
    default = _declared("default", 5)
    link_low = _declared("linklow", 0, instance_link_rank=2)
    link_high = _declared("linkhigh", 0, instance_link_rank=7)
    in_process = _declared("mem", 0, cross_process=False, in_process=True, instance_link_rank=50)
    reg = registry(default, link_low, link_high, in_process)
    assert reg.instance_link_default().spec.name == "linkhigh"
    assert reg.local_default().spec.name == "default", "the link's rank does not make it the clients' default"
    assert registry(default, _declared("unranked", 0)).instance_link_default().spec.name == "default"
