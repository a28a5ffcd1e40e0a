"""Configuration resolution: precedence and provenance, flame.yaml errors, endpoints, runtime settings."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from flamepy_core.config import (
    DEFAULT_FLAME_CACHE_ENDPOINT,
    DEFAULT_FLAME_ENDPOINT,
    ClientConfig,
    FlameConfigWarning,
    FlameContext,
    RuntimeSettings,
    flame_home,
    normalize_endpoint,
    resolve_config,
)
from flamepy_core.contracts.errors import FlameError, FlameErrorCode

ALL_ENV = (
    "FLAME_HOME",
    "FLAME_ENDPOINT",
    "FLAME_CACHE_ENDPOINT",
    "FLAME_CACHE_STORAGE",
    "FLAME_CA_FILE",
    "FLAME_TRANSPORT",
    "FLAME_SERIALIZER",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own FLAME_* variables must not leak into these tests."""
    for name in ALL_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in [f.upper() for f in RuntimeSettings.__dataclass_fields__]:
        monkeypatch.delenv(f"FLAME_{name}", raising=False)


def write_conf(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "flame.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


FULL = """
current-context: prod
contexts:
  - name: dev
    cluster:
      endpoint: "http://dev:8080"
  - name: prod
    cluster:
      endpoint: "grpc://file-host:8080"
    cache:
      endpoint: "grpc://file-cache:9090"
      storage: /file/storage
    transport: grpc
    serializer: pickle
"""


# --------------------------------------------------------------------------------------- precedence


@pytest.mark.parametrize(
    ("field", "env_var", "file_value", "env_value", "arg_value"),
    [
        ("endpoint", "FLAME_ENDPOINT", "grpc://file-host:8080", "zmq+tcp://env:1", "inmem://arg"),
        ("cache_endpoint", "FLAME_CACHE_ENDPOINT", "grpc://file-cache:9090", "grpc://env:2", "grpc://arg:3"),
        ("transport", "FLAME_TRANSPORT", "grpc", "zmq", "inmem"),
        ("serializer", "FLAME_SERIALIZER", "pickle", "json", "msgpack"),
    ],
)
def test_precedence_argument_env_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    field: str,
    env_var: str,
    file_value: str,
    env_value: str,
    arg_value: str,
) -> None:
    path = write_conf(tmp_path, FULL)
    file_source = f"file:{path}#context prod"

    cfg = resolve_config(home=tmp_path)
    assert getattr(cfg, field) == file_value
    assert cfg.source[field] == file_source

    # The environment is read at call time, not at import.
    monkeypatch.setenv(env_var, env_value)
    cfg = resolve_config(home=tmp_path)
    assert getattr(cfg, field) == env_value
    assert cfg.source[field] == f"env:{env_var}"

    kwargs: dict[str, Any] = {field: arg_value}
    cfg = resolve_config(home=tmp_path, **kwargs)
    assert getattr(cfg, field) == arg_value
    assert cfg.source[field] == "argument"


def test_defaults_when_nothing_configured(tmp_path: Path) -> None:
    cfg = resolve_config(home=tmp_path / "nothing-here", env={})
    assert cfg == ClientConfig(
        home=tmp_path / "nothing-here",
        endpoint=None,
        cache_endpoint=None,
        transport=None,
        serializer="cloudpickle",
        ca_file=None,
        cache_ca_file=None,
        cache_storage=None,
        source=cfg.source,
    )
    assert set(cfg.source) >= {
        "endpoint",
        "cache_endpoint",
        "transport",
        "serializer",
        "ca_file",
        "cache_ca_file",
        "cache_storage",
    }
    assert {k: v for k, v in cfg.source.items() if k != "home"} == dict.fromkeys(set(cfg.source) - {"home"}, "default")
    assert cfg.source["home"] == "argument"


def test_file_fields_and_cache_storage_precedence(tmp_path: Path) -> None:
    path = write_conf(tmp_path, FULL)
    cfg = resolve_config(home=tmp_path, env={})
    assert cfg.cache_storage == "/file/storage"
    assert cfg.source["cache_storage"] == f"file:{path}#context prod"
    cfg = resolve_config(home=tmp_path, env={"FLAME_CACHE_STORAGE": "/env/storage"})
    assert (cfg.cache_storage, cfg.source["cache_storage"]) == ("/env/storage", "env:FLAME_CACHE_STORAGE")


def test_flame_home_env_selects_the_file_and_home_argument_beats_it(tmp_path: Path) -> None:
    env_home = tmp_path / "env-home"
    write_conf(env_home, "current-context: a\ncontexts:\n  - name: a\n    cluster: {endpoint: 'grpc://e:1'}\n")
    arg_home = tmp_path / "arg-home"
    write_conf(arg_home, "current-context: b\ncontexts:\n  - name: b\n    cluster: {endpoint: 'grpc://a:2'}\n")

    cfg = resolve_config(env={"FLAME_HOME": str(env_home)})
    assert (cfg.home, cfg.endpoint, cfg.source["home"]) == (env_home, "grpc://e:1", "env:FLAME_HOME")

    cfg = resolve_config(home=arg_home, env={"FLAME_HOME": str(env_home)})
    assert (cfg.home, cfg.endpoint, cfg.source["home"]) == (arg_home, "grpc://a:2", "argument")


def test_flame_home_default_is_read_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "u1"))
    assert flame_home() == tmp_path / "u1" / ".flame"
    monkeypatch.setenv("HOME", str(tmp_path / "u2"))
    assert flame_home() == tmp_path / "u2" / ".flame"
    monkeypatch.setenv("FLAME_HOME", str(tmp_path / "custom"))
    assert flame_home() == tmp_path / "custom"
    assert resolve_config().source["home"] == "env:FLAME_HOME"


def test_relative_flame_home_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert flame_home({"FLAME_HOME": "rel"}) == tmp_path / "rel"


def test_empty_env_var_counts_as_unset(tmp_path: Path) -> None:
    write_conf(tmp_path, FULL)
    cfg = resolve_config(home=tmp_path, env={"FLAME_ENDPOINT": "", "FLAME_TRANSPORT": "  "})
    assert cfg.endpoint == "grpc://file-host:8080"
    assert cfg.transport == "grpc"


def test_endpoints_are_normalised_from_every_source(tmp_path: Path) -> None:
    write_conf(tmp_path, "current-context: a\ncontexts:\n  - name: a\n    cluster: {endpoint: 'file:8080'}\n")
    assert resolve_config(home=tmp_path, env={}).endpoint == "http://file:8080"
    assert resolve_config(home=tmp_path, env={"FLAME_ENDPOINT": "/run/x.sock"}).endpoint == "/run/x.sock"
    assert resolve_config(home=tmp_path, endpoint="h:1").endpoint == "http://h:1"
    with pytest.raises(FlameError) as ei:
        resolve_config(home=tmp_path, endpoint="")
    assert ei.value.code == FlameErrorCode.INVALID_CONFIG
    assert ei.value.message == "address cannot be empty"


def test_config_file_argument_must_exist(tmp_path: Path) -> None:
    other = write_conf(tmp_path / "elsewhere", FULL)
    cfg = resolve_config(home=tmp_path / "home", config_file=other, env={})
    assert cfg.endpoint == "grpc://file-host:8080"
    assert cfg.home == tmp_path / "home"
    with pytest.raises(FlameError) as ei:
        resolve_config(home=tmp_path, config_file=tmp_path / "missing.yaml", env={})
    assert ei.value.code == FlameErrorCode.INVALID_CONFIG
    assert str(tmp_path / "missing.yaml") in ei.value.message


# ------------------------------------------------------------------------------------- CA file rule


def test_ca_file_env_fills_only_where_file_sets_none(tmp_path: Path) -> None:
    path = write_conf(
        tmp_path,
        """
        current-context: a
        contexts:
          - name: a
            cluster:
              endpoint: "https://h:8443"
              tls: {ca_file: /file/ca.pem}
            cache:
              endpoint: "grpcs://h:9443"
        """,
    )
    cfg = resolve_config(home=tmp_path, env={"FLAME_CA_FILE": "/env/ca.pem"})
    assert cfg.ca_file == "/file/ca.pem"
    assert cfg.source["ca_file"] == f"file:{path}#context a"
    assert cfg.cache_ca_file == "/env/ca.pem"
    assert cfg.source["cache_ca_file"] == "env:FLAME_CA_FILE"

    ctx = FlameContext(home=tmp_path, env={"FLAME_CA_FILE": "/env/ca.pem"})
    assert ctx.tls is not None and ctx.tls.ca_file == "/file/ca.pem"
    assert ctx.cache_tls is not None and ctx.cache_tls.ca_file == "/env/ca.pem"


def test_ca_file_env_without_file(tmp_path: Path) -> None:
    cfg = resolve_config(home=tmp_path, env={"FLAME_CA_FILE": "/env/ca.pem"})
    assert (cfg.ca_file, cfg.cache_ca_file) == ("/env/ca.pem", "/env/ca.pem")
    assert cfg.source["ca_file"] == cfg.source["cache_ca_file"] == "env:FLAME_CA_FILE"
    assert resolve_config(home=tmp_path, env={}).ca_file is None


# ------------------------------------------------------------------------------------ file errors


def test_missing_current_context(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "contexts:\n  - name: a\n")
    with pytest.raises(FlameError) as ei:
        resolve_config(home=tmp_path, env={})
    assert ei.value.code == FlameErrorCode.INVALID_CONFIG
    assert ei.value.message == f"current-context is not set in {path}"


def test_empty_file_is_missing_current_context(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "")
    with pytest.raises(FlameError, match="current-context is not set") as ei:
        resolve_config(home=tmp_path, env={})
    assert str(path) in ei.value.message


def test_unknown_current_context_lists_defined_ones(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "current-context: c\ncontexts:\n  - name: a\n  - name: b\n")
    with pytest.raises(FlameError) as ei:
        resolve_config(home=tmp_path, env={})
    assert ei.value.code == FlameErrorCode.INVALID_CONFIG
    assert ei.value.message == f"context c not found in {path}; contexts defined: a, b"
    with pytest.raises(FlameError) as ei:
        FlameContext(home=tmp_path, env={})
    assert ei.value.message == f"context c not found in {path}; contexts defined: a, b"


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "current-context: a\ncontexts:\n  - name: a\n    cluster: {endpoint: [\n")
    with pytest.raises(FlameError) as ei:
        resolve_config(home=tmp_path, env={})
    assert ei.value.code == FlameErrorCode.INVALID_CONFIG
    assert ei.value.message.startswith(f"{path}, line 5")
    assert "malformed YAML" in ei.value.message


@pytest.mark.parametrize(
    ("body", "key", "line", "got"),
    [
        ("current-context: a\ncontexts:\n  - name: a\n    cluster:\n      endpoint: 8080\n",
         "contexts[0].cluster.endpoint", 5, "int 8080"),
        ("current-context: a\ncontexts:\n  - name: a\n    cluster: http://x:1\n",
         "contexts[0].cluster", 4, '"http://x:1"'),
        ("current-context: a\ncontexts: {a: 1}\n", "contexts", 2, "a mapping"),
        ("current-context: a\ncontexts:\n  - name: a\n  - name: b\n    transport: [zmq]\n",
         "contexts[1].transport", 5, "a list"),
        ("current-context: [a]\ncontexts: []\n", "current-context", 1, "a list"),
        ("current-context: a\ncontexts:\n  - name: a\n    package:\n      excludes: [ok, 3]\n",
         "contexts[0].package.excludes[1]", 5, "int 3"),
    ],
)  # fmt: skip
def test_wrong_types_name_file_key_and_line(tmp_path: Path, body: str, key: str, line: int, got: str) -> None:
    path = write_conf(tmp_path, body)
    with pytest.raises(FlameError) as ei:
        resolve_config(home=tmp_path, env={})
    assert ei.value.code == FlameErrorCode.INVALID_CONFIG
    assert ei.value.message.startswith(f"{path}, line {line}: {key}: expected ")
    assert got in ei.value.message


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "current-context: a\ncurrent-context: b\ncontexts: []\n")
    with pytest.raises(FlameError) as ei:
        resolve_config(home=tmp_path, env={})
    assert ei.value.message.startswith(f"{path}, line 2: current-context: duplicate key")


def test_unknown_keys_warn_but_do_not_fail(tmp_path: Path) -> None:
    path = write_conf(
        tmp_path,
        """
        current-context: a
        contexts:
          - name: a
            cluster:
              endpoint: "grpc://h:1"
              timeout: 5
            executors: 3
        """,
    )
    with pytest.warns(FlameConfigWarning) as record:
        cfg = resolve_config(home=tmp_path, env={})
    assert cfg.endpoint == "grpc://h:1"
    messages = [str(w.message) for w in record]
    assert any(m.startswith(f"{path}, line 6: contexts[0].cluster.timeout: unknown key") for m in messages)
    assert any(m.startswith(f"{path}, line 7: contexts[0].executors: unknown key") for m in messages)


def test_missing_file_is_fine(tmp_path: Path) -> None:
    assert not (tmp_path / "flame.yaml").exists()
    assert resolve_config(home=tmp_path, env={"FLAME_ENDPOINT": "grpc://x:1"}).endpoint == "grpc://x:1"


# --------------------------------------------------------------------------------- normalize_endpoint


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/run/flame/instance.sock", "/run/flame/instance.sock"),  # a bare socket path: see endpoint_url
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("flame-session-manager:8080", "http://flame-session-manager:8080"),
        ("[::1]:8080", "http://[::1]:8080"),
        ("  localhost:9090\n", "http://localhost:9090"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://h:443", "https://h:443"),
        ("grpc://127.0.0.1:9090", "grpc://127.0.0.1:9090"),
        ("unix:///run/flame.sock", "unix:///run/flame.sock"),
        ("zmq+ipc:///run/x", "zmq+ipc:///run/x"),
        ("inmem://", "inmem://"),
        ("relative/path.sock", "relative/path.sock"),
    ],
)
def test_normalize_endpoint(given: str, expected: str) -> None:
    assert normalize_endpoint(given) == expected


@pytest.mark.parametrize("blank", ["", "   "])
def test_normalize_endpoint_empty(blank: str) -> None:
    with pytest.raises(FlameError) as ei:
        normalize_endpoint(blank)
    assert ei.value.code == FlameErrorCode.INVALID_CONFIG
    assert ei.value.message == "address cannot be empty"


# ------------------------------------------------------------------------------------- FlameContext


def test_flame_context_defaults_are_flames(tmp_path: Path) -> None:
    ctx = FlameContext(home=tmp_path, env={})
    assert ctx.endpoint == DEFAULT_FLAME_ENDPOINT == "http://127.0.0.1:8080"
    assert ctx.cache_endpoint == DEFAULT_FLAME_CACHE_ENDPOINT == "grpc://127.0.0.1:9090"
    assert ctx.cache.endpoint == DEFAULT_FLAME_CACHE_ENDPOINT
    assert ctx.tls is None and ctx.cache_tls is None
    assert ctx.package is None
    assert ctx.runner.template == "flmrun"
    # ...while the client itself resolves "nothing configured" to the embedded server.
    assert resolve_config(home=tmp_path, env={}).endpoint is None


def test_flame_context_reads_file_and_env_overrides(tmp_path: Path) -> None:
    write_conf(
        tmp_path,
        """
        current-context: a
        contexts:
          - name: a
            cluster: {endpoint: "http://file:8080"}
            cache: {endpoint: "grpc://file:9090", storage: /file/store}
            package: {storage: "file:///pkgs", excludes: ["*.log", ".venv"]}
            runner: {template: my-runner}
        """,
    )
    ctx = FlameContext(home=tmp_path, env={"FLAME_CACHE_ENDPOINT": "grpc://env:1"})
    assert ctx.endpoint == "http://file:8080"
    assert ctx.cluster.endpoint == "http://file:8080"
    assert ctx.cache_endpoint == "grpc://env:1"
    assert ctx.cache.storage == "/file/store"
    assert ctx.package is not None
    assert ctx.package.storage == "file:///pkgs"
    assert ctx.package.excludes == [".venv", "__pycache__", ".gitignore", "*.pyc", "*.log"]
    assert ctx.runner.template == "my-runner"
    assert ctx.context_name == "a"


# ---------------------------------------------------------------------------------- RuntimeSettings


def test_runtime_settings_defaults() -> None:
    s = RuntimeSettings.from_env({})
    assert s == RuntimeSettings()
    assert (s.instance_start_timeout, s.session_enter_timeout, s.instance_call_timeout) == (30, 30, 60)
    assert (s.task_retry_limit, s.instance_start_retry_limit) == (3, 3)
    assert (s.shutdown_grace, s.delay_release, s.idle_exit) == (5, 60, 600)
    assert s.max_message_size == 256 * 1024 * 1024
    assert (s.heartbeat_interval, s.stderr_tail_lines, s.warm_pool_max) == (1.0, 20, 8)


def test_runtime_settings_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAME_INSTANCE_START_TIMEOUT", "0.25")
    monkeypatch.setenv("FLAME_TASK_RETRY_LIMIT", "0")
    monkeypatch.setenv("FLAME_MAX_MESSAGE_SIZE", "64MiB")
    monkeypatch.setenv("FLAME_IDLE_EXIT", "0")
    monkeypatch.setenv("FLAME_WARM_POOL_MAX", "2")
    s = RuntimeSettings.from_env(heartbeat_interval=0.05, warm_pool_max=1)
    assert s.instance_start_timeout == 0.25
    assert s.task_retry_limit == 0
    assert s.max_message_size == 64 * 1024 * 1024
    assert s.idle_exit == 0
    assert s.heartbeat_interval == 0.05
    assert s.warm_pool_max == 1  # keyword beats environment
    assert s.session_enter_timeout == 30


@pytest.mark.parametrize(
    ("var", "value", "complaint"),
    [
        ("FLAME_INSTANCE_START_TIMEOUT", "soon", "not a number"),
        ("FLAME_SHUTDOWN_GRACE", "-1", "0 or more"),
        ("FLAME_TASK_RETRY_LIMIT", "2.5", "not a whole number"),
        ("FLAME_TASK_RETRY_LIMIT", "-3", "0 or more"),
        ("FLAME_HEARTBEAT_INTERVAL", "0", "greater than 0"),
        ("FLAME_SESSION_ENTER_TIMEOUT", "nan", "finite"),
        ("FLAME_MAX_MESSAGE_SIZE", "12 parsecs", "not a size"),
    ],
)
def test_runtime_settings_bad_env_values(var: str, value: str, complaint: str) -> None:
    with pytest.raises(FlameError) as ei:
        RuntimeSettings.from_env({var: value})
    assert ei.value.code == FlameErrorCode.INVALID_CONFIG
    assert f"{var}={value!r}" in ei.value.message
    assert complaint in ei.value.message


def test_runtime_settings_bad_direct_values() -> None:
    with pytest.raises(FlameError) as ei:
        RuntimeSettings(delay_release=-1)
    assert ei.value.code == FlameErrorCode.INVALID_CONFIG
    assert "delay_release" in ei.value.message and "FLAME_DELAY_RELEASE" in ei.value.message
    with pytest.raises(FlameError):
        RuntimeSettings.from_env({}, warm_pool_max=True)
    with pytest.raises(TypeError, match="no_such_setting"):
        RuntimeSettings.from_env({}, no_such_setting=1)
