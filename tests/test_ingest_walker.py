"""Folder walker: what is visited, what is skipped and why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.ingest.walker import FileEntry, SkippedFile, walk_folder


def walk(root: Path, **kwargs) -> tuple[dict[str, FileEntry], dict[str, str]]:
    files: dict[str, FileEntry] = {}
    skipped: dict[str, str] = {}
    for item in walk_folder(root, **kwargs):
        relative = str(item.path.relative_to(root))
        if isinstance(item, FileEntry):
            files[relative] = item
        else:
            skipped[relative] = item.reason
    return files, skipped


def test_recursive_walk_in_name_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "b" / "two.md").write_text("two")
    (tmp_path / "a" / "deep" / "one.txt").write_text("one")
    (tmp_path / "top.rst").write_text("top")
    paths = [str(item.path.relative_to(tmp_path)) for item in walk_folder(tmp_path)]
    assert paths == ["a/deep/one.txt", "b/two.md", "top.rst"]


def test_entries_carry_size_mtime_and_format(tmp_path):
    path = tmp_path / "page.html"
    path.write_text("<p>hello</p>")
    os.utime(path, (1_700_000_000, 1_700_000_000))
    files, _ = walk(tmp_path)
    entry = files["page.html"]
    assert entry.path == path
    assert entry.size == 12
    assert entry.mtime == 1_700_000_000
    assert entry.format == "html"


def test_hidden_and_vcs_folders_are_skipped(tmp_path):
    for folder in (".git", ".hg", ".venv", "__pycache__", "node_modules"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "inside.txt").write_text("x")
    (tmp_path / ".hidden.md").write_text("x")
    (tmp_path / "visible.md").write_text("x")
    (tmp_path / "CVS").write_text("a file, not the CVS folder")
    files, skipped = walk(tmp_path)
    assert list(files) == ["CVS", "visible.md"]
    assert skipped == {}


def test_symlink_loop_is_not_followed(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a")
    (tmp_path / "docs" / "loop").symlink_to(tmp_path)
    (tmp_path / "docs" / "self").symlink_to(tmp_path / "docs")
    files, _ = walk(tmp_path)
    assert list(files) == ["docs/a.txt"]


def test_symlink_to_outside_folder_is_followed_once(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.txt").write_text("x")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link1").symlink_to(outside)
    (root / "link2").symlink_to(outside)
    files, _ = walk(root)
    assert list(files) == ["link1/x.txt"]


def test_skip_reasons(tmp_path):
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "fake.txt").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(100))
    (tmp_path / "nul.md").write_bytes(b"text\x00text")
    (tmp_path / "big.txt").write_text("x" * 2000)
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "missing.txt")
    os.mkfifo(tmp_path / "pipe.txt")
    files, skipped = walk(tmp_path, max_file_bytes=1000)
    assert files == {}
    assert skipped["image.png"] == "unsupported file type .png"
    assert skipped["fake.txt"] == "binary file: ELF executable"
    assert skipped["nul.md"] == "binary file: contains NUL bytes"
    assert skipped["big.txt"] == "too large: 2000 bytes exceeds the limit of 1000 bytes"
    assert skipped["dangling.txt"] == "broken symlink: its target does not exist"
    assert skipped["pipe.txt"] == "not a regular file (device, socket or pipe)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of their mode")
def test_unreadable_file_is_skipped(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("x")
    path.chmod(0)
    _, skipped = walk(tmp_path)
    assert skipped["secret.txt"].startswith("unreadable:")


def test_cancel_stops_the_walk(tmp_path):
    for index in range(5):
        (tmp_path / f"d{index}").mkdir()
        (tmp_path / f"d{index}" / "f.txt").write_text("x")
    assert list(walk_folder(tmp_path, cancel=lambda: True)) == []


def test_missing_or_file_root_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found: .*nowhere"):
        list(walk_folder(tmp_path / "nowhere"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder: .*file.txt"):
        list(walk_folder(tmp_path / "file.txt"))
    with pytest.raises(ValueError, match="max_file_bytes must be positive, got 0"):
        list(walk_folder(tmp_path, max_file_bytes=0))


def make_sphinx_site(root: Path) -> None:
    """Write the layout of a Sphinx HTML build: pages, a search index and its support folders."""
    (root / "library").mkdir(parents=True)
    (root / "_static").mkdir()
    (root / "_sources" / "library").mkdir(parents=True)
    (root / "index.html").write_text("<p>Welcome</p>")
    (root / "library" / "json.html").write_text("<p>JSON encoder</p>")
    (root / "searchindex.js").write_text("Search.setIndex({})")
    (root / "_static" / "underscore.js").write_text("var create = function () {};")
    (root / "_static" / "theme.css").write_text("body { margin: 0 }")
    (root / "_sources" / "library" / "json.rst.txt").write_text("JSON encoder")


def test_generated_site_support_files_are_skipped(tmp_path):
    make_sphinx_site(tmp_path / "html")
    files, skipped = walk(tmp_path / "html")
    assert sorted(files) == ["index.html", "library/json.html"]
    assert skipped == {}


def test_generated_site_found_below_the_root(tmp_path):
    make_sphinx_site(tmp_path / "docs" / "html")
    (tmp_path / "notes.md").write_text("# Notes")
    files, _ = walk(tmp_path)
    assert sorted(files) == ["docs/html/index.html", "docs/html/library/json.html", "notes.md"]


def test_site_assets_kept_when_asked(tmp_path):
    make_sphinx_site(tmp_path)
    files, _ = walk(tmp_path, skip_site_assets=False)
    assert "_static/underscore.js" in files
    assert "_sources/library/json.rst.txt" in files
    assert "searchindex.js" in files


def test_source_tree_keeps_code_and_underscore_folders(tmp_path):
    (tmp_path / "_internal").mkdir()
    (tmp_path / "static").mkdir()
    (tmp_path / "_internal" / "helpers.py").write_text("def helper():\n    return 1\n")
    (tmp_path / "static" / "app.js").write_text("export const answer = 42;\n")
    (tmp_path / "style.css").write_text("body { margin: 0 }\n")
    files, skipped = walk(tmp_path)
    assert sorted(files) == ["_internal/helpers.py", "static/app.js", "style.css"]
    assert skipped == {}


def test_minified_bundle_is_skipped_with_reason(tmp_path):
    (tmp_path / "vendor.min.js").write_text("var a=1;" * 100)
    (tmp_path / "app.js").write_text("const a = 1;\n")
    files, skipped = walk(tmp_path)
    assert list(files) == ["app.js"]
    assert skipped["vendor.min.js"].startswith("minified bundle")
