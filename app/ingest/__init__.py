"""Document ingestion: walk a folder, extract text, split it into passages.

`ingest_folder` (in `pipeline.py`) writes the passages into a memory engine;
the walker, extractors and splitter are pure and usable on their own.
"""

from app.ingest.extractors import ExtractedText, ExtractionError, FileScan, Heading, extract, scan_file
from app.ingest.pipeline import IngestProgress, IngestReport, ingest_folder
from app.ingest.splitter import DEFAULT_MAX_CHARS, Passage, split_passages
from app.ingest.walker import FileEntry, SkippedFile, walk_folder

__all__ = [
    "DEFAULT_MAX_CHARS",
    "ExtractedText",
    "ExtractionError",
    "FileEntry",
    "FileScan",
    "Heading",
    "IngestProgress",
    "IngestReport",
    "Passage",
    "SkippedFile",
    "extract",
    "ingest_folder",
    "scan_file",
    "split_passages",
    "walk_folder",
]
