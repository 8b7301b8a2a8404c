"""Export a memory into one archive and import it back."""

from __future__ import annotations

import tarfile

import pytest

from app.memory import ArchiveError, Memory, MemoryConfig

SMALL = MemoryConfig(fact_key_dim=1 << 10, fact_value_dim=32, passage_key_dim=1 << 10, passage_value_dim=32, semantic=False)


def test_export_import_round_trip(tmp_path):
    with Memory.open(tmp_path / "a", config=SMALL) as memory:
        memory.teach("locker code", "4312")
        memory.teach("locker code", "5555")
        archive = memory.export(tmp_path / "memory.tar")
    Memory.import_archive(archive, data_dir=tmp_path / "b")
    with Memory.open(tmp_path / "b", config=SMALL) as memory:
        assert [(f.subject, f.value) for f in memory.facts()] == [("locker code", "5555")]
        assert [r.value for r in memory.history("locker code")] == ["4312", "5555"]
        assert memory.recall("What is my locker code?").items[0].value == "5555"


def test_import_keeps_replaced_files(tmp_path):
    with Memory.open(tmp_path / "a", config=SMALL) as memory:
        memory.teach("boat name", "Tern")
        archive = memory.export(tmp_path / "memory.tar")
    with Memory.open(tmp_path / "b", config=SMALL) as memory:
        memory.teach("car plate", "XY-12")
    Memory.import_archive(archive, data_dir=tmp_path / "b")
    backups = [p for p in (tmp_path / "b").iterdir() if p.name.startswith("replaced-")]
    assert len(backups) == 1
    assert (backups[0] / "memory.db").exists()


def test_damaged_archive_is_rejected_and_target_untouched(tmp_path):
    with Memory.open(tmp_path / "a", config=SMALL) as memory:
        memory.teach("boat name", "Tern")
        archive = memory.export(tmp_path / "memory.tar")
    data = bytearray(archive.read_bytes())
    # Invert 16 bytes in the middle of the archive, inside a member's data.
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(data))
    with Memory.open(tmp_path / "b", config=SMALL) as memory:
        memory.teach("car plate", "XY-12")
    with pytest.raises(ArchiveError, match="damaged|SHA-256|cannot be read"):
        Memory.import_archive(damaged, data_dir=tmp_path / "b")
    with Memory.open(tmp_path / "b", config=SMALL) as memory:
        assert [f.value for f in memory.facts()] == ["XY-12"]


def test_foreign_tar_is_rejected(tmp_path):
    foreign = tmp_path / "foreign.tar"
    (tmp_path / "x.txt").write_text("hello")
    with tarfile.open(foreign, "w") as tar:
        tar.add(tmp_path / "x.txt", arcname="x.txt")
    with pytest.raises(ArchiveError, match="not a hydra-chat memory archive"):
        Memory.import_archive(foreign, data_dir=tmp_path / "b")
    with pytest.raises(ArchiveError, match="not found"):
        Memory.import_archive(tmp_path / "missing.tar", data_dir=tmp_path / "b")
