"""FLAME_HOME is private: after a real server ran a real instance, nothing in it is open to group or others.

The runs use a umask of 000, under which every file and directory would be world-readable (and
writable) unless it is *created* with its mode: so these tests prove the modes are given at creation,
not inherited from a friendly umask. Both transports run, since each binds its sockets its own way.
"""

from __future__ import annotations

import os
import stat
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from flamepy.service import Session
from flamepy_core.privacy import create_private_file, private_dir, private_umask, write_private_file

SERVICE = """
    from flamepy import service

    ins = service.FlameInstance()


    @ins.entrypoint
    def echo(req):
        print("a line for the instance's log")
        return req


    if __name__ == "__main__":
        ins.run()
    """


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def loose_entries(root: Path) -> list[str]:
    """Every path under ``root`` (itself included) with a group or other permission bit, with its mode.

    An entry gone between the listing and its look (an instance's socket, removed as the instance leaves
    after its session closed) is skipped: what no longer exists is open to no one."""
    found = []
    for path in [root, *root.rglob("*")]:
        try:
            mode = stat.S_IMODE(os.lstat(path).st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {mode:04o}")
    return found


@pytest.mark.parametrize("flame_env", ["zmq", "grpc"], indirect=True)
def test_a_fresh_home_and_everything_in_it_is_private(flame_env, open_umask, tmp_path: Path) -> None:
    home = flame_env.home
    os.rmdir(home)  # the runtime creates it, as on a first run
    (tmp_path / "service.py").write_text(textwrap.dedent(SERVICE))  # the service lives outside the home
    (tmp_path / "app.yaml").write_text(
        f"metadata: {{name: echo}}\n"
        f"spec: {{working_directory: ., command: {sys.executable}, arguments: [service.py]}}\n"
    )
    register = flame_env.flmctl("register", "--file", str(tmp_path / "app.yaml"))  # creates the home, starts a server
    assert "open to other users" not in register.stderr, "a fresh home needs no tightening"
    with Session("echo") as session:
        assert session.invoke("hello") == "hello"
        # While the instance is bound: its socket exists now.
        sockets = [p.name for p in home.rglob("*") if stat.S_ISSOCK(os.lstat(p).st_mode)]
        assert len(sockets) >= 2, f"the server's and the instance's sockets: {sockets}"
        assert not loose_entries(home), loose_entries(home)
    names = {p.relative_to(home).as_posix() for p in home.rglob("*")}
    for expected in ("flame.db", "flame.db-wal", "server.json", "server.lock", "start.lock", "logs/server.log"):
        assert expected in names, f"{expected} was written (so its mode was checked): {sorted(names)}"
    assert any(n.startswith("logs/instances/echo-") and n.endswith(".out") for n in names), sorted(names)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert not loose_entries(home), loose_entries(home)


def test_an_existing_open_home_is_tightened_with_a_warning(flame_env) -> None:
    home = flame_env.home
    os.chmod(home, 0o755)
    (home / "flame.db").touch()
    os.chmod(home / "flame.db", 0o644)  # as an older version left it
    first = flame_env.flmctl("list")  # the first process to use the home tightens it, and says so
    assert f"FLAME_HOME {home} was open to other users (mode 0755); it is now private (mode 0700)" in first.stderr
    assert stat.S_IMODE(home.stat().st_mode) == 0o700, "the home now protects what an older version left open"
    assert "was open to other users" not in flame_env.flmctl("list").stderr, "said once"
    flame_env.write_service("echo", SERVICE)
    with Session("echo") as session:
        assert session.invoke(1) == 1


# -- the building blocks -------------------------------------------------------------------------------


def test_private_dir_creates_missing_parents_private(tmp_path: Path, open_umask) -> None:
    target = tmp_path / "a" / "b" / "home"
    private_dir(target)
    for path in (tmp_path / "a", tmp_path / "a" / "b", target):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


def test_private_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "home").write_text("")
    with pytest.raises(Exception, match="is not a directory"):
        private_dir(tmp_path / "home")


def test_private_files_are_created_private_and_never_truncated(tmp_path: Path, open_umask) -> None:
    db = tmp_path / "flame.db"
    assert create_private_file(db)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    db.write_bytes(b"SQLite format 3\x00 keep me")
    assert not create_private_file(db)
    assert db.read_bytes().endswith(b"keep me")
    out = tmp_path / "server.json"
    write_private_file(out, b"{}")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flame.db", "server.json"], "no temporary file is left"


def test_private_umask_masks_group_and_other_and_restores(open_umask) -> None:
    with private_umask():
        inside = os.umask(0o077)
        os.umask(inside)
    assert inside == 0o077
    assert os.umask(0) == 0, "restored"
