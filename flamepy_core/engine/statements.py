"""A transaction's statements, with each run of one single-row write merged into a few multi-row ones.

Why. Python's sqlite module lets go of the GIL for each statement it runs and takes it back after. A
thread that applies many statements while the server's other threads are busy in Python waits for the
GIL once per statement:

* the fold thread applying a few hundred logged results (the ahead log: 27 warm results took the GIL
  about a hundred times, and a server thread with a client's answer to send found it taken in one invoke
  in ten, waiting ~36 µs, measured with uprobes on ``take_gil``, 2 CPUs);
* the writer thread committing a ``run()`` burst's task creations and results, a few thousand statements
  per transaction: 311 ms of wall time for 59 ms of CPU in one commit, measured in place, while the
  answers to the client waited for that commit.

Fewer statements take it fewer times, and cost less on their own (27 rows in one: 188 -> 138 µs of CPU).

Two shapes are merged, each only where the result is the same as running the statements one by one:

* ``INSERT [OR ...] INTO t (...) VALUES (?, ...)``: a run of one such statement becomes multi-row
  ``VALUES`` lists (sqlite inserts them in order, firing the same triggers, and a conflict resolves as it
  would between two statements; where one fails, the transaction they are in fails either way);
* ``UPDATE t SET a = ?, ... WHERE k = ? AND ...``: a run becomes ``UPDATE t SET a = v.column1, ... FROM
  (VALUES (...), ...) AS v WHERE t.k = v.columnN AND ...`` (sqlite 3.33 or later), with no key twice in
  one statement: sqlite updates each row it joins once, with one of the joined rows, so a key named
  twice would be updated once with either value; a repeated key starts a new statement, keeping the later
  value last. An update that sets a column it is keyed by is left as it is (one by one, a later update
  can find a row at the key an earlier one moved it to). Each row updated fires its row triggers as the
  single update would (the store's triggers write other tables only).

A run is cut into statements of a power of two rows each (27: 16, 8, 2 and 1), at most
``MERGED_PARAMETERS`` parameters and ``most_rows`` rows: a statement has a handful of shapes, which the
connection's cache of prepared statements (128 by default) keeps, rather than one per length of run.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = ["MERGED_PARAMETERS", "merged_statements"]

Op = tuple[str, tuple[Any, ...]]

MERGED_PARAMETERS = 999
"""Parameters of one merged statement at most: sqlite's smallest limit on a statement's parameters (999,
the default of releases before 3.32), so that a merge never makes a statement sqlite refuses."""

UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)
"""Whether this sqlite has ``UPDATE ... FROM`` (3.33, 2020): runs of updates are merged only then."""

_VALUE = r"\s*(?:\?|NULL|X'')\s*"
_ONE_ROW_INSERT = re.compile(
    rf"INSERT(?: OR [A-Z]+)? INTO \w+ \([\w, ]+\) VALUES (\((?:{_VALUE},)*{_VALUE}\))", re.ASCII
)
_ONE_ROW_UPDATE = re.compile(r"UPDATE (\w+) SET (\w+ = \?(?:, \w+ = \?)*) WHERE (\w+ = \?(?: AND \w+ = \?)*)", re.ASCII)


class _Shape(NamedTuple):
    """How a run of one statement is merged: ``head``, then ``row`` once per row (comma-separated),
    then ``tail``; a row takes ``width`` parameters, the last ``keys`` of which name the row it writes (0:
    an insert)."""

    head: str
    row: str
    tail: str
    width: int
    keys: int

    def statement(self, rows: int) -> str:
        return self.head + ",".join([self.row] * rows) + self.tail


_shapes: dict[str, _Shape | None] = {}
"""Each statement's shape if it is one that merges, else None (at most 1,024 statements kept)."""


def _shape(sql: str) -> _Shape | None:
    if sql in _shapes:
        return _shapes[sql]
    shape = None
    insert = _ONE_ROW_INSERT.fullmatch(sql)
    update = None if insert is not None or not UPDATE_FROM else _ONE_ROW_UPDATE.fullmatch(sql)
    if insert is not None:
        row = insert.group(1)
        shape = _Shape(sql[: insert.start(1)], row, "", row.count("?"), 0)
    elif update is not None:
        table = update.group(1)
        columns = [part.split(" = ")[0] for part in update.group(2).split(", ")]
        keys = [part.split(" = ")[0] for part in update.group(3).split(" AND ")]
        # One by one, an update that moves a row to a key makes a later one find it there; joined, every
        # row is matched against its key before the statement: not the same, so such an update is left as it is.
        if not set(columns) & set(keys):
            width = len(columns) + len(keys)
            sets = ", ".join(f"{column} = v.column{at}" for at, column in enumerate(columns, 1))
            where = " AND ".join(f"{table}.{key} = v.column{at}" for at, key in enumerate(keys, len(columns) + 1))
            head, tail = f"UPDATE {table} SET {sets} FROM (VALUES ", f") AS v WHERE {where}"
            shape = _Shape(head, f"({','.join('?' * width)})", tail, width, len(keys))
    if len(_shapes) < 1024:
        _shapes[sql] = shape
    return shape


def _distinct_keys(ops: Sequence[Op], start: int, end: int, keys: int) -> int:
    """How many of ``ops[start:end]``, from the first, name rows (their last ``keys`` parameters) that
    no earlier one of them names."""
    seen: set[tuple[Any, ...]] = set()
    for at in range(start, end):
        key = ops[at][1][-keys:]
        if key in seen:
            return at - start
        seen.add(key)
    return end - start


def merged_statements(ops: Sequence[Op], most_rows: int | None = None) -> list[Op]:
    """The statements ``ops``, each run of one single-row insert or keyed update merged into statements
    of a power of two rows, ``most_rows`` at most when given (see the module's docstring): what applying
    them to sqlite runs, to the same effect."""
    merged: list[Op] = []
    at = 0
    while at < len(ops):
        sql, params = ops[at]
        end = at + 1
        while end < len(ops) and ops[end][0] == sql and len(ops[end][1]) == len(params):
            end += 1
        shape = _shape(sql) if end - at > 1 and params else None
        if shape is None or len(params) != shape.width:  # (a statement sqlite will refuse: as it is)
            merged += ops[at:end]
            at = end
            continue
        most = max(1, MERGED_PARAMETERS // len(params))
        if most_rows is not None:
            most = max(1, min(most, most_rows))
        while at < end:
            take = min(end - at, most)
            if shape.keys:
                take = _distinct_keys(ops, at, at + take, shape.keys)
            rows = 1 << (take.bit_length() - 1)
            if rows == 1:
                merged.append(ops[at])
            else:
                values: list[Any] = []
                for _sql, row_params in ops[at : at + rows]:
                    values += row_params
                merged.append((shape.statement(rows), tuple(values)))
            at += rows
    return merged
