"""A table's rows on the `sqlite3` driver itself, in the formats SQLAlchemy stores and reads.

SQLAlchemy Core's statement path (execution context, compiled parameters, result
metadata) costs more than SQLite's own work for a one-row statement on the hot path
(docs/benchmarks.md, "Floor of a run"). Here a statement is SQL text made once and its
values are converted by the very bind and result processors SQLAlchemy's SQLite dialect
uses for each column's type (DATETIME as "YYYY-MM-DD HH:MM:SS.ffffff", JSON as json.dumps
text, booleans as 0/1), so rows written either way are stored the same and read back the
same through the ORM, Core or this. Only for a `sqlite3.Connection` (`driver_of`): every
other dialect, and aiosqlite, keep SQLAlchemy Core."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection

_DIALECT = sqlite.dialect()
Processor = Callable[[Any], Any]


def driver_of(conn: Connection) -> sqlite3.Connection | None:
    """The `sqlite3` connection under a Core connection on SQLite through pysqlite; None on
    any other dialect or driver (aiosqlite's adapted connection, asyncpg, aiomysql)."""
    if conn.dialect.name != "sqlite":
        return None
    driver = conn.connection.driver_connection
    return driver if isinstance(driver, sqlite3.Connection) else None


def placeholders(count: int) -> str:
    """ "?,?,..." for an IN list of `count` values."""
    return ",".join("?" * count)


def _same(value: Any) -> Any:
    return value


class SqliteRows:
    """One table's column list, its INSERT, and the conversions of its values to and from
    what SQLite stores, as SQLAlchemy's SQLite dialect does them."""

    def __init__(self, table: Table) -> None:
        self.table = table.name
        self.columns: tuple[str, ...] = tuple(c.key for c in table.columns)
        self.select_list = ", ".join(self.columns)
        self.insert_sql = (  # column names and placeholders only
            f"INSERT INTO {table.name} ({self.select_list}) "  # noqa: S608
            f"VALUES ({placeholders(len(self.columns))})"
        )
        self._bind: dict[str, Processor] = {}
        results: list[tuple[int, Processor]] = []
        for i, column in enumerate(table.columns):
            impl = column.type.dialect_impl(_DIALECT)
            bind = impl.bind_processor(_DIALECT)
            if bind is not None:
                self._bind[column.key] = bind
            result = impl.result_processor(_DIALECT, None)
            if result is not None:
                results.append((i, result))
        self._results = tuple(results)

    def bind(self, key: str, value: Any) -> Any:
        """`value` of column `key` as stored."""
        process = self._bind.get(key)
        return value if process is None else process(value)

    def bind_processor(self, key: str) -> Processor:
        """The conversion of column `key`'s values to what is stored."""
        return self._bind.get(key, _same)

    def insert_values(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        """Every column's stored value for the INSERT (`values` has every column)."""
        bind = self._bind
        return tuple(bind[key](values[key]) if key in bind else values[key] for key in self.columns)

    def read(self, stored: Sequence[Any]) -> dict[str, Any]:
        """A row as selected with `select_list`, as SQLAlchemy would read it back."""
        row = list(stored)
        for i, process in self._results:
            row[i] = process(row[i])
        return dict(zip(self.columns, row, strict=True))

    def read_all(self, rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
        return [self.read(row) for row in rows]


class SqliteStatement:
    """A Core statement compiled once for SQLite, run on the driver: its SQL text, its
    parameters in order with their types' bind processors, and the values of the constants
    the statement binds itself. No expanding (IN list) parameters."""

    def __init__(self, statement: Any) -> None:
        compiled = statement.compile(dialect=_DIALECT)
        self.sql: str = compiled.string
        names = compiled.positiontup or ()
        params: list[tuple[str, Any, Processor | None]] = []
        for name in names:
            bind = compiled.binds[name]
            if bind.expanding:
                raise ValueError(f"expanding parameter {name!r}: not supported")
            process = bind.type._cached_bind_processor(_DIALECT)
            params.append((name, bind.value, process))
        self._params = tuple(params)

    def values(self, given: Mapping[str, Any]) -> tuple[Any, ...]:
        """The statement's parameters in order: `given` by name, its own constants else."""
        out = []
        for name, constant, process in self._params:
            value = given.get(name, constant)
            out.append(value if process is None else process(value))
        return tuple(out)

    def scalar(self, driver: sqlite3.Connection, given: Mapping[str, Any]) -> Any:
        """The first column of the first row (None if there is none)."""
        row = driver.execute(self.sql, self.values(given)).fetchone()
        return None if row is None else row[0]
