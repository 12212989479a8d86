from __future__ import annotations

import sqlite3

import pytest

from jamcaps_desktop.library import Library, LibraryError
from jamcaps_desktop.library.schema import SCHEMA_VERSION
from jamcaps_desktop.paths import LIBRARY_ENV, default_library_path, resolve_library_path


def test_new_library_is_wal_with_foreign_keys_and_current_schema(tmp_path):
    with Library(tmp_path / "deep" / "folder" / "lib.sqlite") as lib:
        assert lib.schema_version == SCHEMA_VERSION
        assert lib.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert lib.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert {"tracks", "track_tags", "scans", "scan_issues"} <= set(lib.db.table_names())


def test_reopening_does_not_migrate_again(tmp_path):
    path = tmp_path / "lib.sqlite"
    with Library(path) as lib:
        lib.conn.execute("INSERT INTO scans (started_at, roots) VALUES ('now', '[]')")
    with Library(path) as lib:
        assert lib.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == 1


def test_library_from_a_newer_app_is_refused(tmp_path):
    path = tmp_path / "lib.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(LibraryError, match="newer"):
        Library(path)


def test_a_file_that_is_not_a_database_gives_a_clear_error(tmp_path):
    path = tmp_path / "lib.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LibraryError, match=r"not a jamcaps library|cannot open"):
        Library(path)


def test_deleting_a_track_cascades_to_its_tags(tmp_path):
    with Library(tmp_path / "lib.sqlite") as lib:
        with lib.transaction() as conn:
            conn.execute("INSERT INTO tracks (id, path_key, path, size, mtime_ns, status, added_at, updated_at) "
                         "VALUES (1, X'2f612e6d7033', '/a.mp3', 1, 1, 'ok', 'x', 'x')")
            conn.execute("INSERT INTO track_tags VALUES (1, 0, 'title', 'TIT2', 'A')")
        with lib.transaction() as conn:
            conn.execute("DELETE FROM tracks WHERE id = 1")
        assert lib.conn.execute("SELECT COUNT(*) FROM track_tags").fetchone()[0] == 0


def test_transaction_rolls_back_on_error(tmp_path):
    with Library(tmp_path / "lib.sqlite") as lib:
        with pytest.raises(RuntimeError), lib.transaction() as conn:
            conn.execute("INSERT INTO scans (started_at, roots) VALUES ('now', '[]')")
            raise RuntimeError("boom")
        assert lib.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == 0


def test_library_location_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(LIBRARY_ENV, raising=False)
    assert default_library_path().name == "library.sqlite"
    monkeypatch.setenv(LIBRARY_ENV, str(tmp_path / "env.sqlite"))
    assert resolve_library_path(None) == tmp_path / "env.sqlite"
    assert resolve_library_path(tmp_path / "flag.sqlite") == tmp_path / "flag.sqlite"


def test_a_new_migration_upgrades_an_existing_library_and_keeps_its_data(tmp_path, monkeypatch):
    from jamcaps_desktop.library import database, schema

    path = tmp_path / "lib.sqlite"
    with Library(path) as lib, lib.transaction() as conn:
        conn.execute("INSERT INTO tracks (path_key, path, size, mtime_ns, status, added_at, updated_at) "
                     "VALUES (X'2f612e666c6163', '/a.flac', 1, 1, 'ok', 'x', 'x')")
    extra = "CREATE TABLE later_stage (track_id INTEGER NOT NULL REFERENCES tracks(id) ON DELETE CASCADE, x TEXT);"
    monkeypatch.setattr(database, "MIGRATIONS", [*schema.MIGRATIONS, extra])
    monkeypatch.setattr(database, "SCHEMA_VERSION", schema.SCHEMA_VERSION + 1)
    with Library(path) as lib:
        assert lib.schema_version == schema.SCHEMA_VERSION + 1
        assert "later_stage" in lib.db.table_names()
        assert lib.conn.execute("SELECT path FROM tracks").fetchall() == [("/a.flac",)]


def test_a_failing_migration_leaves_the_library_at_its_old_version(tmp_path, monkeypatch):
    from jamcaps_desktop.library import database, schema

    path = tmp_path / "lib.sqlite"
    Library(path).close()
    broken = "CREATE TABLE ok_part (x INTEGER);\nTHIS IS NOT SQL;"
    monkeypatch.setattr(database, "MIGRATIONS", [*schema.MIGRATIONS, broken])
    monkeypatch.setattr(database, "SCHEMA_VERSION", schema.SCHEMA_VERSION + 1)
    with pytest.raises(LibraryError, match="cannot upgrade"):
        Library(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'ok_part'").fetchall() == []
    conn.close()
