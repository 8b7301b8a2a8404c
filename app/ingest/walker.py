"""Folder walker: which files under a folder are candidates for ingestion.

The walk is iterative (no recursion limit), visits directories in sorted
order so runs are reproducible, and never follows a directory symlink back
into a directory it has already visited, so symlink loops end. Hidden
entries (names starting with ".", which covers .git, .hg and .svn) and
well-known tool folders are skipped without a record, because they are not
the user's documents. Every other file becomes either a `FileEntry` to
extract or a `SkippedFile` with the reason.

Built documentation sites get one more rule. A folder that contains a site
generator's search index (`GENERATED_SITE_MARKERS`: Sphinx writes
`searchindex.js` and `objects.inv`, MkDocs `search/search_index.json`) is
a generated site. Inside it the walk skips, without a record:

- the generator's support folders (`SITE_SUPPORT_DIR_NAMES`, and every
  folder whose name starts with "_", which is how Sphinx names `_static`,
  `_sources`, `_images` and `_downloads`). They contain bundled JavaScript and
  CSS, images and plain-text copies of the pages' sources, which would
  duplicate the pages or win recall with unrelated code;
- the site's own JavaScript and CSS files and its search index.

Everywhere else, source code (".js" included) and folders starting with "_"
are walked as usual, and `skip_site_assets=False` turns the rule off.
Minified bundles (`*.min.js`, `*.min.css`) are skipped anywhere, with a
reason, because they are build output on one line.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from app.ingest.extractors import SNIFF_BYTES, format_for_path, sniff_binary

logger = logging.getLogger(__name__)

# Folders that hold tool output or dependencies rather than documents. Hidden
# folders (".git", ".venv", ".tox", ...) are skipped by the dot rule.
SKIPPED_DIR_NAMES = frozenset(
    {
        "__pycache__",
        "node_modules",
        "CVS",
        "_darcs",
        "site-packages",
        "__MACOSX",
    }
)

DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024

# A folder containing one of these paths is a site built by a documentation
# generator: Sphinx (`searchindex.js`, `objects.inv`) or MkDocs.
GENERATED_SITE_MARKERS = ("searchindex.js", "objects.inv", "search/search_index.json")
# Support folders of generated sites besides the "_"-prefixed ones (MkDocs
# puts its theme under assets/ and its search index under search/).
SITE_SUPPORT_DIR_NAMES = frozenset({"assets", "search"})
# Files of a generated site that are assets, not pages.
SITE_ASSET_SUFFIXES = frozenset({".js", ".css", ".map"})
MINIFIED_SUFFIXES = (".min.js", ".min.css")


@dataclass(frozen=True)
class FileEntry:
    """A regular file to extract: absolute path, size in bytes, mtime in seconds."""

    path: Path
    size: int
    mtime: float
    format: str


@dataclass(frozen=True)
class SkippedFile:
    """A file that will not be extracted, with the reason shown to the user."""

    path: Path
    size: int
    mtime: float
    reason: str


def is_hidden(name: str) -> bool:
    """Return True for hidden names (a leading dot), which the walk skips silently."""
    return name.startswith(".")


def is_generated_site(folder: Path) -> bool:
    """Return True when `folder` contains a documentation generator's search index (see the module docstring)."""
    return any((folder / marker).is_file() for marker in GENERATED_SITE_MARKERS)


def walk_folder(
    root: str | os.PathLike[str],
    *,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    sniff: bool = True,
    cancel: Callable[[], bool] | None = None,
    skip_site_assets: bool = True,
) -> Iterator[FileEntry | SkippedFile]:
    """Yield every non-hidden file under `root` as a `FileEntry` or `SkippedFile`.

    Paths are absolute and keep the names under `root` as they are spelled
    there (symlinks inside the folder are not resolved, so a document keeps
    the path shown in the folder). Directory symlinks are followed once: a link to a
    directory that the walk has already entered is skipped with a log line.
    Files are skipped when they are larger than `max_file_bytes`, are not
    regular files, have a format no extractor reads, or look binary from
    their first bytes (`sniff=False` turns the last check off). Inside a
    generated documentation site, its support folders and asset files are
    left out (`skip_site_assets=False` keeps them).

    Raises `FileNotFoundError` or `NotADirectoryError` naming `root` when it is
    not a readable folder.
    """
    if max_file_bytes <= 0:
        raise ValueError(f"max_file_bytes must be positive, got {max_file_bytes}")
    root_path = Path(os.path.abspath(os.fspath(root)))
    if not root_path.exists():
        raise FileNotFoundError(f"folder not found: {root_path}")
    if not root_path.is_dir():
        raise NotADirectoryError(f"not a folder: {root_path} (pass the folder that contains the documents)")

    root_stat = root_path.stat()
    visited: set[tuple[int, int]] = {(root_stat.st_dev, root_stat.st_ino)}
    # One iterator per open folder: a depth-first walk in name order that
    # never recurses, however deep the tree. Beside each iterator: whether
    # that folder is inside a generated site.
    root_in_site = skip_site_assets and is_generated_site(root_path)
    stack: list[tuple[Iterator[os.DirEntry[str]], bool]] = [(_list_folder(root_path), root_in_site)]
    while stack:
        children, in_site = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            continue
        if cancel is not None and cancel():
            return
        if is_hidden(child.name):
            continue
        if in_site and _is_site_support(child):
            logger.debug("not ingesting %s: a generated site's support file or folder", child.path)
            continue
        item = _classify(Path(child.path), child, visited, max_file_bytes, sniff)
        if isinstance(item, Path):
            stack.append((_list_folder(item), in_site or (skip_site_assets and is_generated_site(item))))
        elif item is not None:
            yield item


def _is_site_support(entry: os.DirEntry[str]) -> bool:
    """Return True for a generated site's support folder, asset file or search index."""
    try:
        is_dir = entry.is_dir(follow_symlinks=True)
    except OSError:
        return False
    if is_dir:
        return entry.name.startswith("_") or entry.name in SITE_SUPPORT_DIR_NAMES
    return Path(entry.name).suffix.lower() in SITE_ASSET_SUFFIXES or entry.name in GENERATED_SITE_MARKERS


def _list_folder(directory: Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as scan:
            children = sorted(scan, key=lambda entry: entry.name)
    except OSError as error:
        logger.warning("cannot list folder %s: %s", directory, error.strerror or error)
        return iter(())
    return iter(children)


def _classify(
    path: Path,
    entry: os.DirEntry[str],
    visited: set[tuple[int, int]],
    max_file_bytes: int,
    sniff: bool,
) -> Path | FileEntry | SkippedFile | None:
    """Return a folder to descend into, a file entry, a skip record or None."""
    try:
        info = entry.stat(follow_symlinks=True)
    except OSError as error:
        if entry.is_symlink():
            return SkippedFile(path, 0, 0.0, "broken symlink: its target does not exist")
        return SkippedFile(path, 0, 0.0, f"unreadable: {error.strerror or error}")

    if stat.S_ISDIR(info.st_mode):
        if entry.name in SKIPPED_DIR_NAMES:
            return None
        key = (info.st_dev, info.st_ino)
        if key in visited:
            logger.info("not following %s: it leads to a folder already visited (symlink loop)", path)
            return None
        visited.add(key)
        return path

    size, mtime = info.st_size, info.st_mtime
    if not stat.S_ISREG(info.st_mode):
        return SkippedFile(path, 0, mtime, "not a regular file (device, socket or pipe)")
    fmt = format_for_path(path)
    if path.name.lower().endswith(MINIFIED_SUFFIXES):
        return SkippedFile(path, size, mtime, "minified bundle: generated code on few lines, not a document")
    if fmt is None:
        return SkippedFile(path, size, mtime, f"unsupported file type {path.suffix or '(no extension)'}")
    if size > max_file_bytes:
        return SkippedFile(
            path, size, mtime, f"too large: {size} bytes exceeds the limit of {max_file_bytes} bytes"
        )
    if sniff and fmt != "pdf":
        try:
            with open(path, "rb") as handle:
                head = handle.read(SNIFF_BYTES)
        except OSError as error:
            return SkippedFile(path, size, mtime, f"unreadable: {error.strerror or error}")
        reason = sniff_binary(head)
        if reason is not None:
            return SkippedFile(path, size, mtime, reason)
    return FileEntry(path, size, mtime, fmt)
