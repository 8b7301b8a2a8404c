"""Atomic, checksummed state files (safetensors with a format header).

A save writes a temporary file in the same folder, fsyncs it, renames it over
the old file and fsyncs the folder, so a crash at any point leaves either the
old file or the new one, never a mix. The safetensors metadata carries the
format name, the format version and a SHA-256 of every tensor's bytes; a load
checks all three and reports a bad file by path without touching it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from app.memory.errors import StateFileError, StorageError

logger = logging.getLogger(__name__)

FORMAT_NAME = "hydra-chat memory state"
FORMAT_VERSION = 1
# Larger than any state this engine writes; a header claiming more is corrupt.
MAX_HEADER_BYTES = 1 << 20


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Return the SHA-256 over the names, dtypes, shapes and bytes of `tensors`, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _write_bytes(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically; the file is readable by the owner only.

    Raises:
        StorageError: the write failed (disk full, read-only folder); the old
            file, if any, is unchanged and the temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as error:
        raise StorageError(f"cannot write {path}: {error.strerror} (is {path.parent} read-only?)") from error
    try:
        try:
            _write_bytes(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as error:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise StorageError(
            f"cannot write {path}: {error.strerror}; the previous file is unchanged. Free disk space "
            "or make the folder writable, then retry"
        ) from error
    fsync_dir(path.parent)


def save_state(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Save `tensors` with `metadata` atomically to `path`; return the file size in bytes."""
    header = dict(metadata)
    header["format"] = FORMAT_NAME
    header["format_version"] = str(FORMAT_VERSION)
    header["sha256"] = tensors_sha256(tensors)
    data = save_safetensors({name: t.contiguous() for name, t in tensors.items()}, metadata=header)
    atomic_write(path, data)
    return len(data)


def _read_header(path: Path, data: bytes) -> dict:
    if len(data) < 8:
        raise StateFileError(str(path), f"the file is {len(data)} bytes long, too short for a state file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise StateFileError(str(path), "the header length is invalid (truncated or not a safetensors file)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StateFileError(str(path), f"the header is not valid JSON ({error})") from error
    except RecursionError as error:
        raise StateFileError(str(path), "the header is JSON nested too deeply to be a state file") from error
    if not isinstance(header, dict):
        raise StateFileError(str(path), f"the header is a JSON {type(header).__name__}, not an object")
    return header


def load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load and verify a state file written by `save_state`.

    Returns:
        (tensors, metadata) with the format keys removed from the metadata.

    Raises:
        StateFileError: the file is truncated, corrupt, foreign, from another
            format version or fails its checksum. The file is never modified.
        StorageError: the file cannot be read.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise StorageError(f"cannot read the state file {path}: {error.strerror}") from error

    header = _read_header(path, data)
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise StateFileError(str(path), "it is not a hydra-chat memory state file")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise StateFileError(
            str(path), f"it has format version {version}, but this hydra-chat reads version {FORMAT_VERSION}"
        )

    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise StateFileError(str(path), f"the tensor data is unreadable ({error})") from error
    if tensors_sha256(tensors) != metadata.get("sha256"):
        raise StateFileError(str(path), "the checksum does not match its contents (the file is corrupt)")
    metadata = {k: v for k, v in metadata.items() if k not in ("format", "format_version", "sha256")}
    return tensors, metadata
