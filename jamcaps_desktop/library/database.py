"""Opening the library: pragmas, migrations, transactions."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import sqlite_utils

from jamcaps_desktop.library.schema import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger(__name__)


class LibraryError(Exception):
    """The library cannot be opened or used (locked, corrupt, newer schema, no permission)."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Library:
    """A music library backed by one SQLite file.

    The connection runs in autocommit mode; every change goes through :meth:`transaction`, so an
    interrupted job leaves whole units of work behind, never half of one.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LibraryError(f"cannot create the library folder {self.path.parent}: {exc.strerror}") from exc
        try:
            conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA foreign_keys = ON")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            raise LibraryError(f"cannot open the library {self.path}: {exc}") from exc
        if mode.lower() != "wal":
            log.warning("library %s runs in %s journal mode, not WAL", self.path, mode)
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self._migrate()

    # -- schema -----------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        try:
            current = self.schema_version
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise LibraryError(f"{self.path} is not a jamcaps library (or is damaged): {exc}") from exc
        if current > SCHEMA_VERSION:
            self.conn.close()
            raise LibraryError(
                f"the library {self.path} has schema version {current}, newer than this app "
                f"understands ({SCHEMA_VERSION}); upgrade jamcaps-desktop to open it"
            )
        for version in range(current, SCHEMA_VERSION):
            log.info("migrating library %s to schema %d", self.path, version + 1)
            try:
                with self.transaction():
                    for statement in _split_sql(MIGRATIONS[version]):
                        self.conn.execute(statement)
                    self.conn.execute(f"PRAGMA user_version = {version + 1}")
            except sqlite3.DatabaseError as exc:
                self.conn.close()
                raise LibraryError(f"cannot upgrade the library {self.path}: {exc}") from exc

    # -- transactions -----------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any exception (KeyboardInterrupt included)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _split_sql(script: str) -> list[str]:
    """Split a migration script into complete statements, the way the sqlite3 shell does."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:80]}")
    return statements


def open_library(path: str | Path) -> Library:
    return Library(path)
