"""Export a memory into one tar archive, and import it back.

The archive contains `manifest.json` (format, version, the SHA-256 and size of
every member), the state file, a consistent copy of the SQLite log (made with
SQLite's backup API, so a live WAL is included) and the chat state when there
is one. Import checks every member before it touches the target folder and
keeps the replaced files in a `replaced-<time>` folder beside them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from app import paths
from app.memory import state_file, store
from app.memory.errors import MemoryError_, StorageError
from app.memory.lock import MemoryLock

if TYPE_CHECKING:
    from app.memory.engine import Memory

logger = logging.getLogger(__name__)

ARCHIVE_FORMAT = "hydra-chat memory archive"
ARCHIVE_VERSION = 1
MANIFEST = "manifest.json"
MEMBERS = ("state.safetensors", "memory.db", "chat_state.safetensors")
REQUIRED = ("state.safetensors", "memory.db")
MAX_MEMBER_BYTES = 1 << 34


class ArchiveError(MemoryError_):
    """An archive is not a hydra-chat memory archive, or is damaged."""


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_memory(memory: Memory, archive: Path) -> Path:
    """Write `memory` (already checkpointed by the caller) into the tar file `archive`."""
    archive = Path(archive).expanduser()
    with tempfile.TemporaryDirectory(dir=memory.data_dir, prefix=".export-") as tmp:
        staging = Path(tmp)
        db_copy = staging / "memory.db"
        target = sqlite3.connect(db_copy)
        try:
            memory.db.conn.backup(target)
        finally:
            target.close()
        files = {"state.safetensors": memory.state_path, "memory.db": db_copy}
        if memory.chat_state_path.exists():
            files["chat_state.safetensors"] = memory.chat_state_path
        manifest = {
            "format": ARCHIVE_FORMAT,
            "version": ARCHIVE_VERSION,
            "created_at": store.utc_now(),
            "members": {name: {"sha256": _sha256_file(p), "size": p.stat().st_size} for name, p in files.items()},
        }
        partial = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")
        try:
            with tarfile.open(partial, "w") as tar:
                data = json.dumps(manifest, indent=1).encode()
                info = tarfile.TarInfo(MANIFEST)
                info.size = len(data)
                info.mode = 0o600
                tar.addfile(info, io.BytesIO(data))
                for name, path in files.items():
                    tar.add(path, arcname=name, recursive=False)
            os.chmod(partial, 0o600)
            with open(partial, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(partial, archive)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise StorageError(f"cannot write the archive {archive}: {error.strerror}") from error
    logger.info("exported the memory to %s", archive)
    return archive


def _read_manifest(tar: tarfile.TarFile, archive: Path) -> dict:
    try:
        member = tar.getmember(MANIFEST)
        data = tar.extractfile(member).read(1 << 20)
        manifest = json.loads(data)
    except (KeyError, AttributeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArchiveError(f"{archive} has no readable {MANIFEST}; it is not a hydra-chat memory archive") from error
    if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
        raise ArchiveError(f"{archive} is not a hydra-chat memory archive")
    if manifest.get("version") != ARCHIVE_VERSION:
        raise ArchiveError(
            f"{archive} has archive version {manifest.get('version')}; this hydra-chat reads version {ARCHIVE_VERSION}"
        )
    members = manifest.get("members")
    if not isinstance(members, dict) or any(name not in MEMBERS for name in members):
        raise ArchiveError(f"{archive} lists unexpected members {sorted(members or {})}; allowed: {list(MEMBERS)}")
    missing = [name for name in REQUIRED if name not in members]
    if missing:
        raise ArchiveError(f"{archive} lacks {missing}")
    return members


def import_memory(archive: Path, data_dir: Path) -> None:
    """Replace the memory in `data_dir` with the one in `archive`.

    Every member is extracted to a staging folder and checked (size,
    SHA-256, the state file's own checksum, SQLite's integrity check) before
    anything in `data_dir` changes. The memory must not be open elsewhere.

    Raises:
        ArchiveError: the archive is missing, foreign or damaged; `data_dir` is unchanged.
        MemoryInUseError: another process has the memory open.
    """
    archive = Path(archive).expanduser()
    if not archive.is_file():
        raise ArchiveError(f"archive {archive} not found")
    paths.ensure_private_dir(data_dir)
    lock = MemoryLock(data_dir)
    try:
        with tempfile.TemporaryDirectory(dir=data_dir, prefix=".import-") as tmp:
            staging = Path(tmp)
            try:
                with tarfile.open(archive, "r:*") as tar:
                    members = _read_manifest(tar, archive)
                    for name, expected in members.items():
                        try:
                            member = tar.getmember(name)
                        except KeyError as error:
                            raise ArchiveError(f"{archive} lists {name} but does not contain it") from error
                        if not member.isreg() or member.size != expected.get("size") or member.size > MAX_MEMBER_BYTES:
                            raise ArchiveError(f"{archive}: member {name} is not a regular file of the listed size")
                        source = tar.extractfile(member)
                        fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                        with os.fdopen(fd, "wb") as out:
                            shutil.copyfileobj(source, out)
                        if _sha256_file(staging / name) != expected.get("sha256"):
                            raise ArchiveError(f"{archive}: member {name} fails its SHA-256 check (damaged archive)")
            except (tarfile.TarError, EOFError, OSError) as error:
                raise ArchiveError(f"{archive} cannot be read as a tar archive: {error}") from error

            state_file.load_state(staging / "state.safetensors")
            conn = sqlite3.connect(staging / "memory.db")
            try:
                result = conn.execute("PRAGMA integrity_check").fetchone()[0]
            except sqlite3.DatabaseError as error:
                raise ArchiveError(f"{archive}: memory.db is not a SQLite database ({error})") from error
            finally:
                conn.close()
            if result != "ok":
                raise ArchiveError(f"{archive}: memory.db fails SQLite's integrity check ({result})")

            existing = [p for p in (data_dir / n for n in (*MEMBERS, "memory.db-wal", "memory.db-shm")) if p.exists()]
            if existing:
                stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
                backup = paths.ensure_private_dir(data_dir / f"replaced-{stamp}")
                for path in existing:
                    os.replace(path, backup / path.name)
                logger.info("moved the replaced memory files to %s", backup)
            for name in members:
                os.replace(staging / name, data_dir / name)
            state_file.fsync_dir(data_dir)
    finally:
        lock.release()
    logger.info("imported the memory from %s into %s", archive, data_dir)
