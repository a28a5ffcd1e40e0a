"""A damaged store is refused at start, with the file, sqlite's words and the next step, and never replaced.

Real faults in a real store: a server runs tasks (their inputs large enough to need overflow pages),
stops, and then a page the start-up path never reads is scribbled, or the file's header is broken. The
next ``flmctl`` call must relay the server's refusal (not a traceback), and the file must be left byte
for byte as it was. Following the advice (moving the files aside) must then give a working server.

A clean stop seals the store, and a start that finds the files as sealed skips the whole-file check; any
write since (even one that puts the modification time back) or a missing seal means the whole check.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from flamepy.service import Session
from flamepy_core.client import local
from flamepy_core.contracts.errors import FlameError, FlameErrorCode
from flamepy_core.engine.integrity import check_store, seal_path, seal_store
from flamepy_core.engine.server import FlameServer
from flamepy_core.home import SERVER_FILE

SERVICE = """
    from flamepy import service

    ins = service.FlameInstance()


    @ins.entrypoint
    def size(req):
        return len(req)


    if __name__ == "__main__":
        ins.run()
    """


def fill_store(flame_env) -> Path:
    """A store with applications, a session and tasks whose inputs spill onto overflow pages; server stopped."""
    flame_env.write_service("sizer", SERVICE)
    with Session("sizer") as session:
        assert [session.invoke("x" * 20_000) for _ in range(5)] == [20_000] * 5
    assert local.stop_server(flame_env.home)
    db = flame_env.home / "flame.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return db


def overflow_page(db: Path) -> tuple[int, int]:
    """(page number, page size) of an overflow page of the payloads table: read only when an input is."""
    conn = sqlite3.connect(db)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        query = "SELECT pageno FROM dbstat WHERE name = 'task_payloads' AND pagetype = 'overflow'"
        rows = conn.execute(query).fetchall()
    except sqlite3.OperationalError as exc:  # pragma: no cover - sqlite built without dbstat
        pytest.skip(f"this sqlite has no dbstat table to find an overflow page: {exc}")
    finally:
        conn.close()
    assert rows, "the inputs were large enough to overflow"
    return rows[len(rows) // 2][0], page_size


def scribble(db: Path, offset: int, data: bytes) -> bytes:
    with open(db, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)
    return db.read_bytes()


def assert_refused(flame_env, db: Path, damaged: bytes, sqlite_says: str) -> None:
    proc = flame_env.flmctl("list", check=False)
    assert proc.returncode == 1, proc
    prefix = f"flmctl: the local flamepy server for {flame_env.home} could not start: the store {db} is damaged"
    assert proc.stderr.startswith(prefix), proc.stderr
    for fragment in (
        f"(sqlite: {sqlite_says}",
        "move it aside",
        f"mv {db} {db}.damaged",
        "a copy you trust",
        ".recover",
    ):
        assert fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert db.read_bytes() == damaged, "the damaged store is left exactly as it was, never replaced"
    assert local.live_server(flame_env.home) is None and not (flame_env.home / SERVER_FILE).exists()


def test_a_scribbled_page_is_refused_at_start(flame_env) -> None:
    db = fill_store(flame_env)
    page, page_size = overflow_page(db)
    # The first 4 bytes of an overflow page point to the next one: garbage there breaks the chain.
    damaged = scribble(db, (page - 1) * page_size, b"\xde\xad\xbe\xef" * (page_size // 4))
    assert_refused(flame_env, db, damaged, "")


def test_a_broken_header_is_refused_naming_the_file(flame_env) -> None:
    db = fill_store(flame_env)
    damaged = scribble(db, 0, b"this is no db!!\x00")
    assert_refused(flame_env, db, damaged, "file is not a database")


def test_following_the_advice_gives_a_working_server(flame_env) -> None:
    db = fill_store(flame_env)
    scribble(db, 0, b"this is no db!!\x00")
    assert flame_env.flmctl("list", check=False).returncode == 1
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{db}{suffix}").exists():
            shutil.move(f"{db}{suffix}", f"{db}{suffix}.damaged")
    assert "sizer" not in flame_env.flmctl("list").stdout, "an empty store"
    assert (flame_env.home / "flame.db.damaged").exists()


def test_a_log_without_its_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "flame.db-wal").write_bytes(b"\x37\x7f\x06\x82" + b"\x00" * 28)
    with pytest.raises(FlameError) as info:
        check_store(tmp_path / "flame.db", 10)
    assert info.value.code == FlameErrorCode.INVALID_STATE and "write-ahead log" in info.value.message
    assert not (tmp_path / "flame.db").exists(), "no store is created next to it"


def test_an_in_process_server_refuses_too(tmp_path: Path) -> None:
    db = tmp_path / "inmem-x.db"
    db.write_bytes(b"this is no db!!\x00" + b"\x00" * 4080)
    server = FlameServer(tmp_path, "inmem://damaged-store", publish=False, db_path=db)
    with pytest.raises(FlameError) as info:
        server.start()
    server.stop()
    assert f"the store {db} is damaged" in info.value.message and "file is not a database" in info.value.message


def test_the_check_is_bounded_in_time(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "flame.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", ((i, b"v" * 100) for i in range(20_000)))
    conn.commit()
    conn.close()
    check_store(db, 10)  # a sound store passes
    with caplog.at_level(logging.WARNING, logger="flamepy_core.engine.integrity"):
        check_store(db, 1e-9)  # cut short: served, and said so
    assert "stopped after" in caplog.text and "FLAME_STORE_CHECK_TIMEOUT" in caplog.text
    check_store(db, 0)  # 0: no check


def sound_store(db: Path) -> None:
    """A sound sqlite file, large enough that a check has to look at the clock, with overflow pages."""
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", ((i, bytes([i % 256]) * 100) for i in range(20_000)))
    conn.executemany("INSERT INTO t VALUES (?, ?)", ((-i, bytes([i]) * 20_000) for i in range(1, 21)))
    conn.commit()
    conn.close()


def test_a_clean_stop_seals_the_store_and_a_start_takes_the_seal(flame_env) -> None:
    db = fill_store(flame_env)  # the server ran and stopped cleanly; the checkpoint above wrote the file since
    assert not check_store(db, 0), "no check: not found sound"
    assert check_store(db, 10), "a whole check that passes finds it sound"
    seal_store(db)
    assert flame_env.flmctl("list").returncode == 0  # starts the server: it takes the seal
    assert not seal_path(db).exists(), "a running server's store has no seal (a crash leaves none)"
    assert local.stop_server(flame_env.home)
    assert seal_path(db).exists(), "its clean stop sealed it again"


def test_a_sealed_store_is_not_read_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "flame.db"
    sound_store(db)
    seal_store(db)
    with caplog.at_level(logging.INFO, logger="flamepy_core.engine.integrity"):
        assert check_store(db, 1e-9), "a matching seal: sound without reading it (no time to read it)"
    assert "not checked again" in caplog.text and "stopped after" not in caplog.text
    assert not seal_path(db).exists(), "a seal is used once"
    assert not check_store(db, 1e-9), "no seal: the check runs (and is cut short here)"


def test_a_write_after_the_seal_is_caught_even_with_the_times_put_back(tmp_path: Path) -> None:
    db = tmp_path / "flame.db"
    sound_store(db)
    seal_store(db)
    before = db.stat()
    scribble(db, 4096 * 3, b"\xde\xad\xbe\xef" * 1024)  # inside the rows' pages
    os.utime(db, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `touch -r` or a careful tool would
    assert db.stat().st_mtime_ns == before.st_mtime_ns and db.stat().st_size == before.st_size
    with pytest.raises(FlameError) as info:
        check_store(db, 10)
    assert f"the store {db} is damaged" in info.value.message


def test_a_copy_put_in_place_of_a_sealed_store_is_checked(tmp_path: Path) -> None:
    db = tmp_path / "flame.db"
    sound_store(db)
    seal_store(db)
    damaged = tmp_path / "copy.db"
    shutil.copy2(db, damaged)  # same bytes and times, another file
    scribble(damaged, 0, b"this is no db!!\x00")
    os.replace(damaged, db)
    with pytest.raises(FlameError) as info:
        check_store(db, 10)
    assert "file is not a database" in info.value.message
