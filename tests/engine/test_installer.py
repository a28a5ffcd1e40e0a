"""The installer hook (``flamepy_core.engine.installer``): interpreters, packages and releases, no server.

Packages are made here (tar.gz and zip) and fetched from a ``file://`` URL, a plain path, or a stand-in
for the object cache; nothing needs the network (no dependencies to install, or none that pip fetches).
"""

from __future__ import annotations

import io
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from flamepy_core.engine.installer import AppInstaller, InstallError
from flamepy_core.wire.proto import types_pb2 as pb

MINE = f"{sys.version_info[0]}.{sys.version_info[1]}"
DEPS_ONLY = b'[project]\nname = "x"\nversion = "0.1.0"\ndependencies = []\n\n[tool.setuptools]\npy-modules = []\n'


def _app(name: str = "app", installer: str | None = None, url: str | None = None, **env: str) -> pb.Application:
    app = pb.Application()
    app.metadata.name = name
    if installer is not None:
        app.spec.installer = installer
    if url is not None:
        app.spec.url = url
    app.spec.environments.extend(pb.Environment(name=k, value=v) for k, v in env.items())
    return app


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_every_instance_gets_the_servers_interpreter(tmp_path: Path) -> None:
    installer = AppInstaller(tmp_path)
    env = {"FLAME_PYTHON": "/somewhere/else/python"}  # the server's own environment does not count
    installer.prepare(_app(), env)
    assert env["FLAME_PYTHON"] == sys.executable
    own = {"FLAME_PYTHON": "/opt/py/bin/python"}
    installer.prepare(_app(FLAME_PYTHON="/opt/py/bin/python"), own)
    assert own["FLAME_PYTHON"] == "/opt/py/bin/python"
    with pytest.raises(InstallError, match="Unknown installer type: 'conda'"):
        installer.prepare(_app(installer="conda"), {})


def test_python_installer_picks_the_version(tmp_path: Path) -> None:
    installer = AppInstaller(tmp_path)
    env = {"FLAME_PYTHON_VERSION": f"python{MINE}"}
    installer.prepare(_app(installer="Python"), env)
    assert (env["FLAME_PYTHON"], env["FLAME_PYTHON_VERSION"]) == (sys.executable, MINE)
    with pytest.raises(InstallError) as err:
        installer.prepare(_app(installer="python"), {"FLAME_PYTHON_VERSION": "3.99", "PATH": ""})
    assert "bind result 10" in err.value.message and "Python 3.99 is not available" in err.value.message


def test_a_package_is_unpacked_once_per_digest(tmp_path: Path) -> None:
    package = _tar(tmp_path / "p.tar.gz", {"pyproject.toml": DEPS_ONLY, "mod.py": b"X = 1\n"})
    installer = AppInstaller(tmp_path / "home")
    env: dict[str, str] = {"PYTHONPATH": "/mine"}
    installer.prepare(_app(installer="python", url=package.as_uri()), env)
    deps, src, mine = env["PYTHONPATH"].split(":")
    assert (Path(src) / "mod.py").read_text() == "X = 1\n" and Path(deps).name == "deps" and mine == "/mine"

    def releases() -> list[str]:
        return sorted(p.name for p in (tmp_path / "home" / "apps" / "app").iterdir() if not p.name.startswith("."))

    assert len(releases()) == 1
    again: dict[str, str] = {}
    installer.prepare(_app(installer="python", url=package.as_uri()), again)
    assert again["PYTHONPATH"] == f"{deps}:{src}" and len(releases()) == 1, "the same package reuses its release"
    _tar(package, {"pyproject.toml": DEPS_ONLY, "mod.py": b"X = 2\n"})
    changed: dict[str, str] = {}
    installer.prepare(_app(installer="python", url=package.as_uri()), changed)
    assert (Path(changed["PYTHONPATH"].split(":")[1]) / "mod.py").read_text() == "X = 2\n"
    assert len(releases()) == 2, "new code, new release"


def test_packages_from_the_object_cache(tmp_path: Path) -> None:
    data = _tar(tmp_path / "c.tar.gz", {"setup.py": b"", "m.py": b""}).read_bytes()
    asked: list[str] = []

    def read(key: str) -> list[bytes]:
        asked.append(key)
        return [data[:10], data[10:]]

    installer = AppInstaller(tmp_path / "home", read)
    env: dict[str, str] = {}
    installer.prepare(_app(installer="binary", url="zmq+ipc:///h/flame.ipc/app/pkg/app.tar.gz"), env)
    assert asked == ["app/pkg/app.tar.gz"]
    assert env["PATH"].split(":")[1].endswith("/src")


@pytest.mark.parametrize(
    ("files", "name", "message"),
    [
        ({"readme.txt": b"no project here"}, "p.tar.gz", "No Python package found"),
        ({"pyproject.toml": DEPS_ONLY}, "p.rar", "unsupported archive format"),
        ({"../evil.py": b"", "pyproject.toml": DEPS_ONLY}, "p.zip", "unsafe member"),
    ],
)
def test_bad_packages_fail_the_install(tmp_path: Path, files: dict[str, bytes], name: str, message: str) -> None:
    path = tmp_path / name
    if name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as zf:
            for member, data in files.items():
                zf.writestr(member, data)
    else:
        _tar(tmp_path / "t.tar.gz", files).rename(path)
    with pytest.raises(InstallError, match=message) as err:
        AppInstaller(tmp_path / "home").prepare(_app(installer="python", url=path.as_uri()), {})
    assert err.value.message.startswith("application install failed (bind result 10) for app:")
    leftovers = [p for p in (tmp_path / "home" / "apps" / "app").iterdir() if p.name.startswith(".release")]
    assert leftovers == [], "a failed release is removed"


def test_an_unreachable_package_names_the_url(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match=r"failed to download the package file:///nonexistent/p\.tar\.gz"):
        AppInstaller(tmp_path).prepare(_app(installer="python", url="file:///nonexistent/p.tar.gz"), {})
