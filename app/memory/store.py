"""The SQLite log of a memory (through sqlite-utils): opening, transactions, row helpers.

The database runs in WAL mode with `synchronous=FULL`, so a committed write
survives a crash or power loss. Writes go through `transaction()`, which
turns SQLite's disk errors into `StorageError` and rolls back, leaving the
log as it was.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils

from app.memory.errors import StorageError
from app.memory.migrations import migrate
from app.memory.records import DocumentRecord, WriteRecord

logger = logging.getLogger(__name__)

DB_NAME = "memory.db"
WRITE_COLUMNS = (
    "id, op, subject, value, source, created_at, supersedes, live_after, undoes, document, passages"
)


def utc_now() -> str:
    """Return the current UTC time as an ISO 8601 string with seconds."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _storage_error(action: str, path: Path, error: sqlite3.Error) -> StorageError:
    text = str(error)
    hint = "free disk space or make the folder writable, then retry"
    if "readonly" in text or "read-only" in text:
        hint = f"make {path.parent} writable, then retry"
    elif "full" in text:
        hint = "free disk space, then retry"
    elif "not a database" in text or "malformed" in text:
        hint = (
            f"the file is corrupt and was left as it is; move it away and restore the memory "
            f"with `hydra-chat import ARCHIVE`, or move the whole folder {path.parent} away to start empty"
        )
    return StorageError(f"cannot {action} the memory log {path}: {text}; {hint}")


def open_database(data_dir: Path) -> sqlite_utils.Database:
    """Open (creating it readable by the owner only) and migrate the log in `data_dir`.

    Raises:
        StorageError: the file cannot be created, opened or migrated.
    """
    path = data_dir / DB_NAME
    try:
        if not path.exists():
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        # isolation_level=None: transactions are begun and committed explicitly.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        db = sqlite_utils.Database(conn)
        migrate(db)
    except sqlite3.DatabaseError as error:
        raise _storage_error("open", path, error) from error
    except OSError as error:
        raise StorageError(f"cannot create the memory log {path}: {error.strerror}") from error
    return db


@contextlib.contextmanager
def transaction(db: sqlite_utils.Database, action: str) -> Iterator[sqlite3.Connection]:
    """Run the block in one immediate transaction; commit at the end or roll back on error.

    Raises:
        StorageError: SQLite failed (disk full, read-only file, I/O error).
    """
    conn = db.conn
    path = Path(db.conn.execute("PRAGMA database_list").fetchone()[2] or DB_NAME)
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as error:
        raise _storage_error(action, path, error) from error
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException as error:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        if isinstance(error, sqlite3.Error):
            raise _storage_error(action, path, error) from error
        raise


def write_record(row: sqlite3.Row | tuple) -> WriteRecord:
    """Build a `WriteRecord` from a row selected with `WRITE_COLUMNS`."""
    return WriteRecord(
        write_id=row[0],
        op=row[1],
        subject=row[2],
        value=row[3],
        source=row[4],
        created_at=row[5],
        supersedes=row[6],
        live_after=row[7],
        undoes=row[8],
        document=row[9],
        passages=row[10],
    )


def get_write(db: sqlite_utils.Database, write_id: int) -> WriteRecord | None:
    """Return the log row `write_id`, or None when there is none."""
    row = db.conn.execute(f"SELECT {WRITE_COLUMNS} FROM writes WHERE id = ?", (write_id,)).fetchone()
    return write_record(row) if row else None


def document_record(row: dict) -> DocumentRecord:
    """Build a `DocumentRecord` from a `documents` row."""
    return DocumentRecord(
        path=row["path"],
        sha256=row["sha256"],
        size=row["size"],
        mtime=row["mtime"],
        status=row["status"],
        reason=row["reason"],
        passages=row["passages"],
    )
