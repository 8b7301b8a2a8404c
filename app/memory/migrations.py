"""Numbered schema migrations of the memory log, recorded in the database.

Each migration runs once, inside one transaction together with the row that
records it in `migrations`, so a crash leaves either the old or the new schema.
Add a migration by appending to `MIGRATIONS`; never edit one that has shipped.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from collections.abc import Callable

import sqlite_utils

from app.memory.errors import MemoryError_

logger = logging.getLogger(__name__)


def _initial_schema(conn: sqlite3.Connection) -> None:
    # `writes` is the log: one row per write, never updated or deleted.
    # `supersedes` is the live fact row (a write id) this write replaced and
    # `live_after` the one that is live after it (NULL after a forget), so an
    # undo can restore the exact previous value.
    conn.execute(
        """CREATE TABLE writes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            op TEXT NOT NULL,
            subject TEXT,
            subject_key TEXT,
            value TEXT,
            source TEXT NOT NULL,
            created_at TEXT NOT NULL,
            supersedes INTEGER REFERENCES writes(id),
            live_after INTEGER REFERENCES writes(id),
            undoes INTEGER REFERENCES writes(id),
            document TEXT,
            passages INTEGER NOT NULL DEFAULT 0
        )"""
    )
    conn.execute("CREATE INDEX writes_subject_key ON writes(subject_key)")
    # The live facts: one row per subject, pointing at the write that set its value.
    conn.execute(
        """CREATE TABLE facts (
            subject_key TEXT PRIMARY KEY,
            write_id INTEGER NOT NULL REFERENCES writes(id)
        )"""
    )
    conn.execute(
        """CREATE TABLE documents (
            path TEXT PRIMARY KEY,
            sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime REAL NOT NULL,
            status TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            passages INTEGER NOT NULL DEFAULT 0,
            write_id INTEGER REFERENCES writes(id),
            updated_at TEXT NOT NULL
        )"""
    )
    # Passages are kept after removal (`removed_by` set) so that replaying the
    # log can erase them from the state again.
    conn.execute(
        """CREATE TABLE passages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            path TEXT NOT NULL,
            start INTEGER NOT NULL,
            "end" INTEGER NOT NULL,
            text TEXT NOT NULL,
            added_by INTEGER NOT NULL REFERENCES writes(id),
            removed_by INTEGER REFERENCES writes(id)
        )"""
    )
    conn.execute("CREATE INDEX passages_added_by ON passages(added_by)")
    conn.execute("CREATE INDEX passages_removed_by ON passages(removed_by)")
    conn.execute("CREATE INDEX passages_live_path ON passages(path) WHERE removed_by IS NULL")
    conn.execute(
        """CREATE TABLE turns (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            role TEXT NOT NULL,
            text TEXT NOT NULL,
            created_at TEXT NOT NULL
        )"""
    )


def _semantic_buckets(conn: sqlite3.Connection) -> None:
    # The semantic LSH buckets of a fact write's subject (a JSON list), so that
    # replaying the log needs no sentence encoder and is exact.
    conn.execute("ALTER TABLE writes ADD COLUMN semantic TEXT")


def _subject_keys_without_determiners(conn: sqlite3.Connection) -> None:
    # Re-key every fact write with the current `normalize_subject`, which
    # drops a leading "the", "a", "an", "my" or "our". Subjects that now
    # share a key ("my locker code" and "the locker code") may share a state
    # key too, where erasing one value erases the other. So every live value
    # of such a key gets a logged forget, and then the newest value is taught
    # again. Opening the memory replays these rows into the state, and the
    # log still rebuilds the state exactly.
    from app.memory.engine import normalize_subject

    rows = conn.execute("SELECT id, subject FROM writes WHERE subject IS NOT NULL").fetchall()
    conn.executemany(
        "UPDATE writes SET subject_key = ? WHERE id = ?",
        [(normalize_subject(subject), write_id) for write_id, subject in rows],
    )
    live = conn.execute(
        "SELECT w.id, w.subject, w.subject_key, w.value, w.semantic FROM facts f JOIN writes w ON w.id = f.write_id "
        "ORDER BY w.id"
    ).fetchall()
    by_key: dict[str, list[tuple]] = {}
    for row in live:
        by_key.setdefault(row[2], []).append(row)
    conn.execute("DELETE FROM facts")
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for subject_key, rows_of_key in by_key.items():
        newest_id, newest_subject, _, newest_value, newest_semantic = rows_of_key[-1]
        if len(rows_of_key) == 1:
            conn.execute("INSERT INTO facts (subject_key, write_id) VALUES (?, ?)", (subject_key, newest_id))
            continue
        for write_id, subject, _, _, semantic in rows_of_key:
            conn.execute(
                "INSERT INTO writes (op, subject, subject_key, value, source, created_at, supersedes, live_after, "
                "semantic) VALUES ('forget', ?, ?, NULL, 'migration', ?, ?, NULL, ?)",
                (subject, subject_key, now, write_id, semantic),
            )
        cursor = conn.execute(
            "INSERT INTO writes (op, subject, subject_key, value, source, created_at, semantic) "
            "VALUES ('teach', ?, ?, ?, 'migration', ?, ?)",
            (newest_subject, subject_key, newest_value, now, newest_semantic),
        )
        conn.execute("UPDATE writes SET live_after = ? WHERE id = ?", (cursor.lastrowid, cursor.lastrowid))
        conn.execute("INSERT INTO facts (subject_key, write_id) VALUES (?, ?)", (subject_key, cursor.lastrowid))
        logger.info(
            "merged fact writes %s, which now share one subject key, into write %d",
            [row[0] for row in rows_of_key], cursor.lastrowid,
        )


MIGRATIONS: list[tuple[int, str, Callable[[sqlite3.Connection], None]]] = [
    (1, "initial schema: writes, facts, documents, passages, turns", _initial_schema),
    (2, "semantic buckets of fact writes", _semantic_buckets),
    (3, "subject keys without leading determiners", _subject_keys_without_determiners),
]


def applied_migrations(db: sqlite_utils.Database) -> list[int]:
    """Return the numbers of the migrations recorded in `db`, in order."""
    if "migrations" not in db.table_names():
        return []
    return [row["number"] for row in db.query("SELECT number FROM migrations ORDER BY number")]


def migrate(db: sqlite_utils.Database) -> list[int]:
    """Apply every migration `db` has not recorded yet; return the numbers applied.

    Raises:
        MemoryError_: the database records a migration that this code does not
            have, which means a newer hydra-chat wrote it.
    """
    conn = db.conn
    conn.execute(
        "CREATE TABLE IF NOT EXISTS migrations (number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    done = set(applied_migrations(db))
    known = {number for number, _, _ in MIGRATIONS}
    newer = sorted(done - known)
    if newer:
        raise MemoryError_(
            f"the memory log records schema migration {newer[-1]}, but this hydra-chat only has "
            f"migrations up to {max(known)}; upgrade hydra-chat to open it"
        )
    applied = []
    for number, name, apply in MIGRATIONS:
        if number in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            apply(conn)
            conn.execute(
                "INSERT INTO migrations (number, name, applied_at) VALUES (?, ?, ?)",
                (number, name, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        logger.info("applied memory schema migration %d: %s", number, name)
        applied.append(number)
    return applied
