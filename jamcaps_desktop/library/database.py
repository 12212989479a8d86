"""Opening the library: pragmas, migrations, transactions."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import sqlite_utils

from jamcaps_desktop.library.schema import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger(__name__)
T = TypeVar("T")


class LibraryError(Exception):
    """The library cannot be opened or used (locked, corrupt, newer schema, no permission)."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Library:
    """A music library backed by one SQLite file.

    The connection runs in autocommit mode; every change goes through :meth:`transaction`, so an
    interrupted job leaves whole units of work behind, never half of one.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise LibraryError(f"there is no library at {self.path} yet; scan a folder first ('jamcaps scan FOLDER')")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LibraryError(f"cannot create the library folder {self.path.parent}: {exc.strerror}") from exc
        try:
            conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA foreign_keys = ON")
            mode = _with_retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0], timeout)
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            raise LibraryError(f"cannot open the library {self.path}: {exc}") from exc
        if mode.lower() != "wal":
            log.warning("library %s runs in %s journal mode, not WAL", self.path, mode)
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        # One connection may serve several threads of a job (the tag writer's file workers):
        # every use of it holds this lock.
        self.lock = threading.RLock()
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
        if current == SCHEMA_VERSION:
            return
        try:
            with self.transaction():
                # another process may have migrated while this one waited for the write lock
                current = self.schema_version
                for version in range(current, SCHEMA_VERSION):
                    log.info("migrating library %s to schema %d", self.path, version + 1)
                    for statement in _split_sql(MIGRATIONS[version]):
                        self.conn.execute(statement)
                    self.conn.execute(f"PRAGMA user_version = {version + 1}")
        except (sqlite3.DatabaseError, ValueError) as exc:
            self.conn.close()
            raise LibraryError(f"cannot upgrade the library {self.path}: {exc}") from exc

    # -- transactions -----------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any exception (KeyboardInterrupt included)."""
        with self.lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                yield self.conn
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")

    @contextmanager
    def job_lock(self, job: str) -> Iterator[None]:
        """Hold the library's job lock: one scan or write at a time, across processes."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            handle = open(lock_path, "a+")  # noqa: SIM115 - held for the whole job
        except OSError as exc:
            raise LibraryError(f"cannot create the lock file {lock_path}: {exc.strerror}") from exc
        try:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
                fcntl = None  # type: ignore[assignment]
            if fcntl is not None:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    raise LibraryError(
                        f"another scan or write is running on the library {self.path}; "
                        f"try again when it has finished") from None
            log.debug("%s holds the job lock of %s", job, self.path)
            yield
        finally:
            handle.close()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _with_retry(action: Callable[[], T], timeout: float) -> T:
    """Run ``action``, retrying while another connection holds a lock it needs (up to ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


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


def open_library(path: str | Path, *, create: bool = True) -> Library:
    return Library(path, create=create)
