"""Application YAML (``flmctl register --file``): parsing, normalisation, and precise error locations."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flamepy_core.cli.appspec import AppSpec, load_app_specs, parse_app_specs
from flamepy_core.contracts.errors import FlameError, FlameErrorCode

# The service guide's echo-app.yaml, verbatim.
ECHO_APP = """\
metadata:
  name: echo-app
spec:
  working_directory: /opt/examples/echo
  command: /usr/bin/python
  arguments:
    - echo_service.py
  environments:
    FLAME_LOG_LEVEL: INFO
"""


def write(tmp_path: Path, text: str, name: str = "app.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_guide_echo_app(tmp_path: Path) -> None:
    path = write(tmp_path, ECHO_APP, "echo-app.yaml")
    specs = load_app_specs(path)
    assert specs == [
        AppSpec(
            name="echo-app",
            attributes={
                "command": "/usr/bin/python",
                "arguments": ["echo_service.py"],
                "environments": {"FLAME_LOG_LEVEL": "INFO"},
                "working_directory": "/opt/examples/echo",
            },
            source=str(path),
        )
    ]
    assert specs[0].serializer is None


def test_every_field_normalised(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        metadata:
          name: full
        spec:
          installer: python
          shim: wasm
          image: ghcr.io/x/y:1
          description: ""
          labels: [a, b]
          command: run
          arguments: ["--port", "8080"]
          environments:
            PORT: 8080
            DEBUG: yes
            VERSION: 1.10
            FLAG: true
            EMPTY: ""
            SINCE: 2024-01-02
          max_instances: 4
          delay_release: 0
          schema:
            input: '{"type": "string"}'
            output: '{"type": "object"}'
          url: file:///opt/pkg.whl
          serializer: json
        """
    )
    [spec] = parse_app_specs(text, "full.yaml")
    assert spec.serializer == "json"
    assert "serializer" not in spec.attributes
    assert spec.attributes == {
        "shim": "Wasm",
        "image": "ghcr.io/x/y:1",
        "description": "",
        "labels": ["a", "b"],
        "command": "run",
        "arguments": ["--port", "8080"],
        # Kept as written, not as YAML 1.1 reads them (8080, True, 1.1, True, a date).
        "environments": {
            "PORT": "8080",
            "DEBUG": "yes",
            "VERSION": "1.10",
            "FLAG": "true",
            "EMPTY": "",
            "SINCE": "2024-01-02",
        },
        "max_instances": 4,
        "delay_release": 0,
        "schema": {"input": '{"type": "string"}', "output": '{"type": "object"}'},
        "url": "file:///opt/pkg.whl",
        "installer": "python",
    }
    # Flame's field order, whatever order the file used.
    order = list(spec.attributes)
    assert (order[0], order[-1]) == ("shim", "installer")


@pytest.mark.parametrize(("given", "expected"), [("Host", "Host"), ("host", "Host"), ("WASM", "Wasm")])
def test_shim_spellings(given: str, expected: str) -> None:
    [spec] = parse_app_specs(f"metadata: {{name: a}}\nspec: {{shim: {given}}}\n", "s.yaml")
    assert spec.attributes["shim"] == expected


def test_null_spec_values_are_unset() -> None:
    [spec] = parse_app_specs("metadata: {name: a}\nspec:\n  image:\n  labels:\n", "n.yaml")
    assert spec.attributes == {}
    [spec] = parse_app_specs("metadata: {name: a}\nspec:\n", "n.yaml")
    assert spec.attributes == {}


def test_multi_document(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "---\nmetadata: {name: one}\n---\nmetadata: {name: two}\nspec: {max_instances: 2}\n---\n",
    )
    specs = load_app_specs(path)
    assert [s.name for s in specs] == ["one", "two"]
    assert specs[0].source == f"{path}, document 1"
    assert specs[1].source == f"{path}, document 2"
    assert specs[1].attributes == {"max_instances": 2}


def test_relative_working_directory_resolves_against_the_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(
        tmp_path,
        "metadata: {name: a}\nspec: {working_directory: ./svc/../echo}\n---\n"
        "metadata: {name: b}\nspec: {working_directory: /abs/dir}\n",
        "proj/apps.yaml",
    )
    a, b = load_app_specs(path)
    assert a.attributes["working_directory"] == str(tmp_path / "proj" / "echo")
    assert b.attributes["working_directory"] == "/abs/dir"
    # Text without a file: relative to base_dir.
    [c] = parse_app_specs("metadata: {name: c}\nspec: {working_directory: w}\n", "t", base_dir=tmp_path)
    assert c.attributes["working_directory"] == str(tmp_path / "w")


# ----------------------------------------------------------------------------------------- errors

ERROR_CASES = [
    pytest.param(
        "metadata:\n  name: a\nspec:\n  command: run\n  workdir: /x\n",
        "spec.workdir", 5, ["unknown key 'workdir'", "accepted keys: shim, image", "working_directory"],
        id="unknown-spec-key",
    ),
    pytest.param(
        "metadata:\n  name: a\n  version: 2\n",
        "metadata.version", 3, ["unknown key 'version'", "accepted keys: name"],
        id="unknown-metadata-key",
    ),
    pytest.param(
        "kind: App\nmetadata:\n  name: a\n",
        "kind", 1, ["unknown key 'kind'", "accepted keys: metadata, spec"],
        id="unknown-top-key",
    ),
    pytest.param(
        "metadata:\n  name: a\nspec:\n  max_instances: ten\n",
        "spec.max_instances", 4, ["'ten' is not accepted", "an integer from 1"],
        id="max-instances-string",
    ),
    pytest.param(
        "metadata:\n  name: a\nspec:\n  max_instances: 0\n",
        "spec.max_instances", 4, ["0 is not accepted", "an integer from 1"],
        id="max-instances-zero",
    ),
    pytest.param(
        "metadata:\n  name: a\nspec:\n  max_instances: true\n",
        "spec.max_instances", 4, ["true (read by YAML as bool True) is not accepted", "an integer"],
        id="max-instances-bool",
    ),
    pytest.param(
        "metadata:\n  name: a\nspec:\n  labels: a, b\n",
        "spec.labels", 4, ["'a, b' is not accepted", "a list of strings"],
        id="labels-not-list",
    ),
    pytest.param(
        "metadata:\n  name: a\nspec:\n  arguments:\n    - serve\n    - 1.10\n",
        "spec.arguments[1]", 6, ["1.10 (read by YAML as float 1.1) is not accepted", "quote it"],
        id="argument-number",
    ),
    pytest.param(
        "metadata:\n  name: a\nspec:\n  shim: Docker\n",
        "spec.shim", 4, ["'Docker' is not accepted", "one of Host, host, Wasm, wasm, WASM"],
        id="bad-shim",
    ),
    pytest.param(
        "metadata:\n  name: a\nspec:\n  shim: HOST\n",
        "spec.shim", 4, ["'HOST' is not accepted", "one of Host, host"],
        id="shim-uppercase-host",
    ),
    pytest.param(
        "metadata:\n  name: a\nspec:\n  command: run\n  delay_release: -5\n",
        "spec.delay_release", 5, ["-5 is not accepted", "from 0"],
        id="negative-delay-release",
    ),
    pytest.param(
        "metadata:\n  name: a\nspec:\n  delay_release: 1.5\n",
        "spec.delay_release", 4, ["1.5 is not accepted", "an integer number of seconds"],
        id="fractional-delay-release",
    ),
    pytest.param(
        "metadata:\n  name: a\nspec:\n  schema:\n    input: '{\"type\": \"string\"}'\n"
        "    output: '{type: x}'\n",
        "spec.schema.output", 6, ["'{type: x}' is not accepted", "JSON Schema as a JSON string"],
        id="invalid-json-schema",
    ),
    pytest.param(
        "metadata:\n  name: a\nspec:\n  schema:\n    inputs: '{}'\n",
        "spec.schema.inputs", 5, ["unknown key 'inputs'", "input, output, common_data"],
        id="schema-unknown-key",
    ),
    pytest.param(
        "metadata:\n  name: a\nspec:\n  installer: pip\n",
        "spec.installer", 4, ["'pip' is not accepted", "one of python, binary"],
        id="bad-installer",
    ),
    pytest.param(
        "metadata:\n  name: a\nspec:\n  environments:\n    A: x\n    B:\n",
        "spec.environments.B", 6, ["null (empty) is not accepted", "write '' for an empty value"],
        id="null-env-value",
    ),
    pytest.param(
        "metadata:\n  name: a\nspec:\n  environments: [A=1]\n",
        "spec.environments", 4, ["a list is not accepted", "a mapping of variable names"],
        id="env-not-mapping",
    ),
    pytest.param(
        "metadata:\n  description: x\n",
        "metadata.description", 2, ["unknown key 'description'"],
        id="metadata-other-key",
    ),
    pytest.param(
        "spec:\n  command: x\nmetadata:\n  labels: {}\n",
        "metadata.labels", 4, ["unknown key"],
        id="metadata-bad-key-after-spec",
    ),
    pytest.param(
        "spec:\n  command: x\nmetadata: {}\n",
        "metadata.name", 3, ["missing; every application needs a name"],
        id="missing-metadata-name",
    ),
    pytest.param(
        "spec:\n  command: x\n",
        "metadata", 1, ["missing; metadata.name is required"],
        id="missing-metadata",
    ),
    pytest.param(
        "metadata:\n  name: ''\n",
        "metadata.name", 2, ["'' is not accepted", "a non-empty string"],
        id="empty-name",
    ),
    pytest.param(
        "metadata:\n  name: team/app\n",
        "metadata.name", 2, ["'team/app' is not accepted", "contains '/' at position 4", "characters of letters"],
        id="slash-in-name",
    ),
    pytest.param(
        "metadata:\n  name: 42\n",
        "metadata.name", 2, ["42 is not accepted", "a string"],
        id="numeric-name",
    ),
    pytest.param(
        "- metadata: {name: a}\n",
        "(document)", 1, ["a list is not accepted", "a mapping with 'metadata'"],
        id="list-document",
    ),
    pytest.param(
        "metadata:\n  name: a\nspec:\n  command: a\n  command: b\n",
        "spec.command", 5, ["duplicate key"],
        id="duplicate-key",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("text", "key_path", "line", "fragments"), ERROR_CASES)
def test_errors_name_file_key_line_value(
    tmp_path: Path, text: str, key_path: str, line: int, fragments: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(FlameError) as ei:
        load_app_specs(path)
    assert ei.value.code == FlameErrorCode.INVALID_ARGUMENT
    message = ei.value.message
    assert message.startswith(f"{path}, line {line}: {key_path}: "), message
    for fragment in fragments:
        assert fragment in message, message


def test_error_in_second_document_names_document_and_absolute_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "metadata: {name: good}\n---\nmetadata:\n  name: bad\nspec:\n  max_instances: -1\n",
    )
    with pytest.raises(FlameError) as ei:
        load_app_specs(path)
    assert ei.value.message.startswith(f"{path}, document 2, line 6: spec.max_instances: -1 is not accepted")


def test_non_mapping_second_document(tmp_path: Path) -> None:
    path = write(tmp_path, "metadata: {name: a}\n---\n# a comment\njust a string\n")
    with pytest.raises(FlameError) as ei:
        load_app_specs(path)
    assert ei.value.code == FlameErrorCode.INVALID_ARGUMENT
    assert ei.value.message.startswith(f"{path}, document 2, line 4: (document): 'just a string' is not")


def test_duplicate_application_names(tmp_path: Path) -> None:
    path = write(tmp_path, "metadata: {name: a}\n---\nmetadata: {name: b}\n---\nmetadata:\n  name: a\n")
    with pytest.raises(FlameError) as ei:
        load_app_specs(path)
    assert ei.value.message.startswith(f"{path}, document 3, line 6: metadata.name: application 'a'")
    assert f"already defined in {path}, document 1" in ei.value.message


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "metadata:\n  name: a\nspec:\n  labels: [a, b\n  command: x\n")
    with pytest.raises(FlameError) as ei:
        load_app_specs(path)
    assert ei.value.code == FlameErrorCode.INVALID_ARGUMENT
    assert ei.value.message.startswith(f"{path}, line ")
    assert "malformed YAML" in ei.value.message


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n---\n"])
def test_no_application(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(FlameError) as ei:
        load_app_specs(path)
    assert ei.value.message.startswith(f"{path}: no application found")


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FlameError) as ei:
        load_app_specs(missing)
    assert ei.value.code == FlameErrorCode.INVALID_ARGUMENT
    assert str(missing) in ei.value.message
