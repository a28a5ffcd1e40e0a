"""The input rules (flamepy_core.validation), the bounded failure text, and bounded YAML loading.

Properties first: the name rule is exactly Flame's published one (compared against an independent
statement of it), every refusal names the field and the rule, and a failure text is always bounded and
free of control characters whatever it held. Then hostile YAML (an alias bomb, a merge-key bomb, deep
nesting, an oversized file) must fail fast with a clear error.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from flamepy_core import validation
from flamepy_core.cli.appspec import load_app_specs, parse_app_specs
from flamepy_core.config import MAX_YAML_DEPTH, MAX_YAML_SIZE, MAX_YAML_VALUES, load_flame_file, load_yaml_documents
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.state import Engine
from flamepy_core.engine.store import Store
from flamepy_core.failure_text import MAX_FAILURE_TEXT, bound_failure_text
from flamepy_core.wire.proto import types_pb2 as pb

# Flame's rule, stated independently of the implementation: 1-253 of [A-Za-z0-9._-], no leading . or -, no "..".
FLAME_NAME = re.compile(r"(?![.-])(?!.*\.\.)[A-Za-z0-9._-]{1,253}")

name_chars = st.sampled_from([*"aZ09._-", " ", "/", "\\", "\0", "\n", "\x1b", "é", "=", ":", "\u202e"])
names = st.text(name_chars, max_size=12) | st.builds(lambda n: "a" * n, st.integers(250, 256))


def refusal(fn, *args) -> FlameError:
    with pytest.raises(FlameError) as info:
        fn(*args)
    assert info.value.code == FlameErrorCode.INVALID_ARGUMENT
    return info.value


@given(names)
@example("a" * 253)
@example("a" * 254)
@example("a..b")
@example(".hidden")
@example("-rf")
@example("echo-app-a1B2c3")
def test_the_name_rule_is_flames(name: str) -> None:
    accepted = FLAME_NAME.fullmatch(name) is not None
    for check, field in (
        (validation.check_application_name, "application name"),
        (validation.check_session_id, "session id"),
    ):
        if accepted:
            check(name)
        else:
            message = refusal(check, name).message
            assert message.startswith(f"{field}: "), message
            assert validation.NAME_RULE in message
            assert len(message) < 600, "a hostile value is never echoed whole"


HOSTILE_SPECS = [
    ("a\0b", pb.ApplicationSpec(), "application name", "NUL"),
    ("a" * 254, pb.ApplicationSpec(), "application name", "254 characters long"),
    ("my app", pb.ApplicationSpec(), "application name", "whitespace"),
    ("ok", pb.ApplicationSpec(command="py\0thon"), "spec.command", "NUL"),
    ("ok", pb.ApplicationSpec(command="python\n"), "spec.command", "control character"),
    ("ok", pb.ApplicationSpec(command=""), "spec.command", "empty"),
    ("ok", pb.ApplicationSpec(command="python", arguments=["ok", "x\0y"]), "spec.arguments[1]", "NUL"),
    ("ok", pb.ApplicationSpec(arguments=["a" * (validation.MAX_ARGUMENT + 1)]), "spec.arguments[0]", "bytes long"),
    ("ok", pb.ApplicationSpec(working_directory="/srv/app/../../etc"), "spec.working_directory", "'..' component"),
    ("ok", pb.ApplicationSpec(working_directory="relative/dir"), "spec.working_directory", "not an absolute path"),
    ("ok", pb.ApplicationSpec(working_directory="/srv/\x1b[2J"), "spec.working_directory", "control character"),
    ("ok", pb.ApplicationSpec(environments=[pb.Environment(name="A=B", value="1")]), "environments name", "'='"),
    ("ok", pb.ApplicationSpec(environments=[pb.Environment(name="", value="1")]), "environments name", "empty"),
    ("ok", pb.ApplicationSpec(environments=[pb.Environment(name="A\nB", value="1")]), "environments name", "control"),
    ("ok", pb.ApplicationSpec(environments=[pb.Environment(name="A", value="x\0")]), "environments['A']", "NUL"),
]


@pytest.mark.parametrize(("name", "spec", "field", "problem"), HOSTILE_SPECS)
def test_the_engine_refuses_hostile_registrations_naming_field_and_rule(
    tmp_path: Path, name: str, spec: pb.ApplicationSpec, field: str, problem: str
) -> None:
    store = Store(tmp_path / "flame.db")
    try:
        engine = Engine(store)
        message = refusal(engine.register_application, name, spec).message
        assert field in message and problem in message, message
        assert "; a " in message or "; an " in message, f"the rule is stated: {message}"
        assert engine.list_applications() == []
        engine.register_application("ok", pb.ApplicationSpec(command="python"))
        message = refusal(engine.update_application, "ok", spec).message if name == "ok" else None
        assert message is None or field in message
    finally:
        store.close()


def test_acceptable_values_pass(tmp_path: Path) -> None:
    spec = pb.ApplicationSpec(
        command="/usr/bin/python3",
        arguments=["-c", "import sys\n\tprint(sys.argv)", "", "--x=1"],
        environments=[pb.Environment(name="PYTHONPATH", value="/a:/b"), pb.Environment(name="EMPTY", value="")],
        working_directory="/srv/my.app/v1..2",  # ".." inside a component is not a "..": only a component is
    )
    store = Store(tmp_path / "flame.db")
    try:
        Engine(store).register_application("my.app_v1-2", spec)
    finally:
        store.close()


def test_session_ids_are_checked_by_the_engine(tmp_path: Path) -> None:
    store = Store(tmp_path / "flame.db")
    try:
        engine = Engine(store)
        engine.register_application("app", pb.ApplicationSpec(command="python"))
        for bad in ("a b", "", "s/1", "-s", "x" * 254, "s\0"):
            message = refusal(engine.create_session, bad, pb.SessionSpec(application="app")).message
            assert message.startswith("session id: ") and validation.NAME_RULE in message
        assert engine.list_sessions() == []
    finally:
        store.close()


# -- failure texts -------------------------------------------------------------------------------------

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@given(st.text(max_size=300), st.integers(16, 200))
def test_a_failure_text_is_bounded_and_escaped(text: str, limit: int) -> None:
    out = bound_failure_text(text, limit)
    assert not CONTROL.search(out)
    escaped_whole = CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if len(escaped_whole) <= limit:
        assert out == escaped_whole, "a text that fits is only escaped"
    else:
        marker = re.search(r"\n\[\.\.\. ([0-9,]+) characters cut \.\.\.\]\n", out)
        head, tail = (out[: marker.start()], out[marker.end() :]) if marker else (out, "")
        assert len(head) <= limit // 2 and len(tail) <= limit // 2
        assert escaped_whole.startswith(head) and escaped_whole.endswith(tail)
        if marker:
            kept = len(CONTROL.sub("x", text)) - int(marker.group(1).replace(",", ""))
            assert kept >= 0


def test_a_ten_megabyte_message_keeps_its_head_and_tail() -> None:
    text = "ValueError: " + "E" * 10_000_000 + "\x1b[31m the end"
    started = time.monotonic()
    out = bound_failure_text(text)
    assert time.monotonic() - started < 1.0
    assert len(out) < MAX_FAILURE_TEXT + 100
    assert out.startswith("ValueError: EEE") and out.endswith("\\x1b[31m the end")
    marker = re.search(r"\n\[\.\.\. ([0-9,]+) characters cut \.\.\.\]\n", out)
    assert marker is not None
    kept = len(out) - len(marker.group()) - 3  # the one escape in the tail is 4 characters for 1
    assert int(marker.group(1).replace(",", "")) == len(text) - kept


# -- bounded YAML --------------------------------------------------------------------------------------


def alias_bomb(levels: int = 9, fanout: int = 9) -> str:
    lines = ["anchors:", '  - &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * fanout) + "]")
    return "\n".join(lines) + f"\nmetadata:\n  name: bomb\nspec:\n  labels: *a{levels}\n"


def merge_bomb(levels: int = 20) -> str:
    lines = ["base: &m0 {k0: v}"]
    for i in range(1, levels + 1):
        lines.append(f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: v}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text", [alias_bomb(), merge_bomb()], ids=["alias-bomb", "merge-key-bomb"])
def test_a_yaml_bomb_fails_fast_with_a_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(text)
    started = time.monotonic()
    with pytest.raises(FlameError) as info:
        load_app_specs(path)
    assert time.monotonic() - started < 2.0, "refused before anything expands"
    assert info.value.code == FlameErrorCode.INVALID_ARGUMENT
    assert str(path) in info.value.message and f"more than {MAX_YAML_VALUES} values" in info.value.message
    assert "aliases" in info.value.message


def test_a_bomb_in_flame_yaml_is_an_invalid_config(tmp_path: Path) -> None:
    path = tmp_path / "flame.yaml"
    path.write_text("current-context: c\ncontexts: []\n" + alias_bomb().replace("metadata", "meta"))
    with pytest.raises(FlameError) as info:
        load_flame_file(path)
    assert info.value.code == FlameErrorCode.INVALID_CONFIG and "values" in info.value.message


@pytest.mark.parametrize("depth", [MAX_YAML_DEPTH + 1, 5000])
def test_deep_nesting_is_refused(depth: int) -> None:
    with pytest.raises(FlameError) as info:
        load_yaml_documents("a: " + "[" * depth + "]" * depth, "deep.yaml", FlameErrorCode.INVALID_ARGUMENT)
    assert f"nested more than {MAX_YAML_DEPTH} levels" in info.value.message
    load_yaml_documents(
        "a: " + "[" * (MAX_YAML_DEPTH - 2) + "]" * (MAX_YAML_DEPTH - 2), "ok.yaml", FlameErrorCode.INVALID_ARGUMENT
    )


def test_an_oversized_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("metadata: {name: big}\n# " + "x" * MAX_YAML_SIZE + "\n")
    with pytest.raises(FlameError) as info:
        load_app_specs(path)
    assert f"larger than {MAX_YAML_SIZE} characters" in info.value.message and str(path) in info.value.message


def test_ordinary_aliases_still_work() -> None:
    text = "x: &env {A: '1'}\nmetadata: {name: app}\nspec: {environments: *env, labels: &l [a, b]}\n"
    with pytest.raises(FlameError, match="unknown key 'x'"):
        parse_app_specs(text)
    [spec] = parse_app_specs("metadata: {name: app}\nspec:\n  labels: &l [a, b]\n  arguments: *l\n")
    assert spec.attributes["arguments"] == ["a", "b"] == spec.attributes["labels"]


@pytest.mark.parametrize(
    ("spec", "path", "problem"),
    [
        ('command: "py\\0thon"', "spec.command", "NUL"),
        ('arguments: [ok, "x\\0"]', "spec.arguments[1]", "NUL"),
        ("environments: {'A=B': x}", "spec.environments", "'='"),
        ('environments: {A: "x\\0y"}', "spec.environments['A']", "NUL"),
        ('working_directory: "/srv/\\x1b"', "spec.working_directory", "control"),
    ],
)
def test_the_yaml_loader_applies_the_server_rules_with_the_line(spec: str, path: str, problem: str) -> None:
    text = f"metadata:\n  name: app\nspec:\n  {spec}\n"
    with pytest.raises(FlameError) as info:
        parse_app_specs(text, "app.yaml", "/tmp")
    message = info.value.message
    assert message.startswith("app.yaml, line 4: ") and path in message and problem in message, message


@pytest.mark.parametrize("name", ["my app", "a" * 254, ".hidden", "a..b", "x\\0"])
def test_the_yaml_loader_refuses_bad_names(name: str) -> None:
    with pytest.raises(FlameError) as info:
        parse_app_specs(f'metadata:\n  name: "{name}"\n', "app.yaml")
    assert info.value.message.startswith("app.yaml, line 2: metadata.name: ")
    assert validation.NAME_RULE in info.value.message
