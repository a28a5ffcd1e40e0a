"""Merging a transaction's runs of single-row inserts and keyed updates (``engine.statements``): the same
store as the statements one by one, in few statements of a few shapes, within sqlite's limits."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flamepy_core.engine import state as state_module
from flamepy_core.engine import statements as statements_module
from flamepy_core.engine import store as store_module
from flamepy_core.engine.statements import MERGED_PARAMETERS, merged_statements

RESULTS = st.tuples(
    st.integers(0, 4),
    st.binary(max_size=8),
    st.integers(0, 9),
    st.none() | st.binary(max_size=8),
    st.sampled_from(["a", "b"]),
    st.integers(0, 6),
)
"""Parameters of a task's final state with its output (``_UPDATE_TASK_WITH_OUTPUT``), over a few tasks."""

ENGINE_WRITES = [
    # (statement, a strategy of its parameters): the engine's own task writes, over a few keys so that
    # rows replace and update each other, firing the task-count triggers.
    (
        state_module._INSERT_FINAL_TASK,
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.integers(0, 6),
            st.integers(0, 4),
            st.none() | st.binary(max_size=8),
            st.none() | st.binary(max_size=8),
            st.binary(max_size=8),
            st.integers(0, 1 << 40),
        ),
    ),
    (
        state_module._INSERT_TASK,
        st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 6), st.integers(0, 4), st.binary(max_size=8)),
    ),
    (
        state_module._UPDATE_TASK,
        st.tuples(
            st.integers(0, 4), st.binary(max_size=8), st.integers(0, 9), st.sampled_from(["a", "b"]), st.integers(0, 6)
        ),
    ),
    (state_module._UPDATE_TASK_WITH_OUTPUT, RESULTS),
    (
        state_module._SAVE_PAYLOAD,
        st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 6), st.integers(0, 1), st.binary(max_size=8)),
    ),
    ("INSERT INTO t (k, v) VALUES (?, ?)", st.tuples(st.integers(0, 5), st.integers(-9, 9))),  # may fail: a key twice
]


def _engine_schema() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("PRAGMA recursive_triggers=ON")
    conn.executescript(store_module.SCHEMA)
    for statement in store_module.TASK_COUNTS:
        conn.execute(statement)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER)")
    return conn


def _apply(conn: sqlite3.Connection, ops: list[tuple[str, tuple[Any, ...]]]) -> str | None:
    """Run ``ops`` in one transaction; the error that rolled it back, if one did."""
    conn.execute("BEGIN")
    try:
        for sql, args in ops:
            conn.execute(sql, args)
    except sqlite3.Error as exc:
        conn.execute("ROLLBACK")
        return type(exc).__name__
    conn.execute("COMMIT")
    return None


def _contents(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    tables = ("tasks", "task_payloads", "task_counts", "t")
    return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall() for table in tables}


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_merged_statements_leave_the_store_as_the_statements_one_by_one_do(data: st.DataObject) -> None:
    picks = data.draw(st.lists(st.sampled_from(range(len(ENGINE_WRITES))), max_size=60), label="statements")
    ops = [(ENGINE_WRITES[pick][0], data.draw(ENGINE_WRITES[pick][1])) for pick in picks]
    one_by_one, merged = _engine_schema(), _engine_schema()
    failed = _apply(one_by_one, ops)
    assert _apply(merged, merged_statements(ops)) == failed
    assert _contents(merged) == _contents(one_by_one)


@given(st.integers(1, 700), st.integers(1, 12))
def test_a_run_is_merged_into_few_statements_of_a_few_shapes_within_sqlites_limit(rows: int, width: int) -> None:
    sql = f"INSERT OR REPLACE INTO x ({', '.join(f'c{i}' for i in range(width))}) VALUES ({','.join('?' * width)})"
    ops = [(sql, tuple(range(row, row + width))) for row in range(rows)]
    merged = merged_statements(ops)
    assert [value for _sql, values in merged for value in values] == [v for _sql, values in ops for v in values]
    sizes = [len(values) // width for _sql, values in merged]
    assert all(size & (size - 1) == 0 for size in sizes), f"a statement of a length that is no power of two: {sizes}"
    assert all(len(values) <= MERGED_PARAMETERS for _sql, values in merged)
    assert sizes == sorted(sizes, reverse=True), "largest first: at most one statement of each size below the cap"
    assert len(merged) <= (rows * width // MERGED_PARAMETERS) + 10


@given(st.integers(1, 300), st.integers(1, 12), st.integers(1, 64))
def test_a_run_merged_with_a_row_cap_keeps_every_value_in_statements_of_that_many_rows_at_most(
    rows: int, width: int, most_rows: int
) -> None:
    sql = f"INSERT INTO x ({', '.join(f'c{i}' for i in range(width))}) VALUES ({','.join('?' * width)})"
    ops = [(sql, tuple(range(row, row + width))) for row in range(rows)]
    merged = merged_statements(ops, most_rows)
    assert [value for _sql, values in merged for value in values] == [v for _sql, values in ops for v in values]
    sizes = [len(values) // width for _sql, values in merged]
    assert max(sizes) <= most_rows and all(len(values) <= MERGED_PARAMETERS for _sql, values in merged)
    assert all(size & (size - 1) == 0 for size in sizes), f"a statement of a length that is no power of two: {sizes}"


def test_statements_that_are_not_a_run_of_one_insert_are_left_as_they_are() -> None:
    ops = [
        ("INSERT INTO t (k) VALUES (?) ON CONFLICT (k) DO NOTHING", (1,)),
        ("INSERT INTO t (k) VALUES (?) ON CONFLICT (k) DO NOTHING", (2,)),
        ("INSERT INTO t (k) SELECT ?", (3,)),
        ("INSERT INTO t (k) SELECT ?", (4,)),
        ("UPDATE t SET k = ?", (5,)),
        ("UPDATE t SET k = ?", (6,)),
        ("INSERT INTO t (k) VALUES (?)", (7,)),
        ("INSERT INTO u (k) VALUES (?)", (8,)),
    ]
    assert merged_statements(ops) == ops


def test_a_run_of_keyed_updates_never_names_a_key_twice_in_one_statement_and_the_later_value_wins() -> None:
    sql = "UPDATE t SET v = ? WHERE k = ?"
    ops = [(sql, (10, 0)), (sql, (11, 1)), (sql, (12, 2)), (sql, (20, 0)), (sql, (13, 3))]
    merged = merged_statements(ops)
    # 0, 1, 2 are distinct (a power of two of them: 0, 1), then 2, 0, 3 (2, 0), then 3 alone, as it was.
    assert [values for _sql, values in merged] == [(10, 0, 11, 1), (12, 2, 20, 0), (13, 3)]
    assert merged[-1] == ops[-1]
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER)")
    conn.executemany("INSERT INTO t VALUES (?, 0)", [(k,) for k in range(5)])
    assert _apply(conn, merged) is None
    assert conn.execute("SELECT k, v FROM t ORDER BY k").fetchall() == [(0, 20), (1, 11), (2, 12), (3, 13), (4, 0)]


def test_an_update_that_sets_its_own_key_is_left_as_it_is_and_a_row_it_moved_is_found_by_the_next() -> None:
    ops = [("UPDATE t SET k = ? WHERE k = ?", (2, 1)), ("UPDATE t SET k = ? WHERE k = ?", (3, 2))]
    assert merged_statements(ops) == ops
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER)")
    conn.execute("INSERT INTO t VALUES (1, 0)")
    assert _apply(conn, merged_statements(ops)) is None
    assert conn.execute("SELECT k FROM t").fetchall() == [(3,)]


def test_updates_are_left_as_they_are_where_sqlite_has_no_update_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statements_module, "UPDATE_FROM", False)
    monkeypatch.setattr(statements_module, "_shapes", {})
    ops = [("UPDATE t SET v = ? WHERE k = ?", (k, k)) for k in range(4)]
    assert merged_statements(ops) == ops


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_a_run_of_result_updates_over_few_tasks_leaves_the_store_as_one_by_one(data: st.DataObject) -> None:
    created = [(state_module._INSERT_TASK, (sid, tid, 1, b"in")) for sid in ("a", "b") for tid in range(4)]
    updates = data.draw(st.lists(RESULTS, min_size=2, max_size=40), label="results")
    ops = created + [(state_module._UPDATE_TASK_WITH_OUTPUT, values) for values in updates]
    one_by_one, merged = _engine_schema(), _engine_schema()
    assert _apply(one_by_one, ops) is None
    statements = merged_statements(ops)
    assert len(statements) < len(ops)
    assert _apply(merged, statements) is None
    assert _contents(merged) == _contents(one_by_one)
