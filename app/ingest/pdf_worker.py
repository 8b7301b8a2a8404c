"""PDF text extraction in a child process, with a timeout and a memory cap.

A damaged PDF can make pypdf loop or allocate without bound, so the parser
runs in a separate interpreter that the parent kills when a file takes too
long. The child reads one JSON request per line on stdin (`{"path": ...}`)
and writes one JSON reply per line on stdout (`{"text": ...}` or
`{"error": ...}`). It is a plain subprocess rather than a multiprocessing
child, so it never re-imports the parent's `__main__` and works the same
under any entry point.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

# The worker's address-space limit, so a hostile PDF cannot exhaust memory.
WORKER_MEMORY_BYTES = 4 * 1024 * 1024 * 1024
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent.parent)


class PdfError(Exception):
    """The worker could not extract text; the message is the reason."""


def pdf_text(path: str) -> str:
    """Extract the text of every page of a PDF, pages separated by blank lines."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path, strict=False)
        if reader.is_encrypted:
            try:
                reader.decrypt("")
            except Exception as error:  # pypdf raises several types for a missing key
                raise PdfError(f"encrypted PDF: {error}") from error
        pages = [page.extract_text() or "" for page in reader.pages]
    except PdfError:
        raise
    except PdfReadError as error:
        raise PdfError(f"broken PDF: {error}") from error
    except RecursionError as error:
        raise PdfError("broken PDF: objects nested too deeply to parse") from error
    except MemoryError as error:
        raise PdfError("broken PDF: parsing it needed more memory than allowed") from error
    except Exception as error:  # a damaged file can trip any code path inside pypdf
        raise PdfError(f"broken PDF: {type(error).__name__}: {error}") from error
    return "\n\n".join(pages)


def serve() -> None:
    """Serve extraction requests from stdin until it closes (the worker's main loop)."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass  # not every platform lets a process lower its own limit
    logging.disable(logging.CRITICAL)
    for line in sys.stdin:
        try:
            reply = {"text": pdf_text(json.loads(line)["path"])}
        except PdfError as error:
            reply = {"error": str(error)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


class PdfWorker:
    """The parent's handle on one worker process, restarted after a timeout or crash."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def extract(self, path: Path, timeout_s: float) -> str:
        """Return the text of the PDF at `path`; raise `PdfError` on failure."""
        with self._lock:
            process = self._ensure_started()
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(json.dumps({"path": os.fspath(path)}) + "\n")
                process.stdin.flush()
            except OSError as error:
                self._stop()
                raise PdfError("PDF parser process stopped unexpectedly") from error
            # NOTE: select() on a pipe works on Linux and macOS, not on Windows.
            ready, _, _ = select.select([process.stdout], [], [], max(timeout_s, 0.0))
            if not ready:
                self._stop()
                raise PdfError(f"PDF parsing timed out after {timeout_s:g} s (damaged or very complex file)")
            line = process.stdout.readline()
            if not line:
                code = process.poll()
                self._stop()
                raise PdfError(f"PDF parser crashed (exit status {code}); the file is probably damaged")
        reply = json.loads(line)
        if "error" in reply:
            raise PdfError(reply["error"])
        return reply["text"]

    def _ensure_started(self) -> subprocess.Popen[str]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._stop()
        code = f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); from app.ingest.pdf_worker import serve; serve()"
        self._process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        return self._process

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def close(self) -> None:
        """Stop the worker process."""
        with self._lock:
            self._stop()
