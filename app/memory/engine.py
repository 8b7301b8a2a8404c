"""The memory engine: a constant-size delta-rule state plus a SQLite write log.

Every write (teach, forget, undo, a document's passages) is committed to the
log first, then applied to the in-memory state as a zero-gradient delta-rule
update. The state file is a checkpoint: it records the id of the last log row
it contains, and opening a memory replays the rows after it. So the log is
the write-ahead log of the state, and a crash at any point loses no
committed write. Replaying the whole log from an empty state rebuilds the
state bit for bit, because it runs the same float operations in the same
order.

The state has two partitions of the same design (`partition.py`): one for
facts, keyed by the subject, and one for document passages, keyed by the
passage text. Values are ±1 codes of the item ids (`codes.py`). Recall reads
the state with the question's key and decodes by clean-up against the codes
of the live items. Their texts and provenance come from SQLite.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import json

import numpy as np
import torch

from app import paths
from app.memory import state_file, store
from app.memory.codes import FACT_SALT, PASSAGE_SALT, item_codes
from app.memory.errors import MemoryError_, StateFileError, StorageError, UndoError, UnknownSubjectError
from app.memory.features import FACT_WEIGHTS, PASSAGE_WEIGHTS, content_words
from app.memory.lock import MemoryLock
from app.memory.partition import DeltaRulePartition
from app.memory.semantic import get_encoder, semantic_buckets, sketch_cosine
from app.memory.threads import one_torch_thread
from app.memory.records import (
    DocumentRecord,
    Fact,
    MemoryItem,
    MemoryStats,
    Recall,
    WriteRecord,
)

logger = logging.getLogger(__name__)

STATE_NAME = "state.safetensors"
CHAT_STATE_NAME = "chat_state.safetensors"
MAX_SUBJECT_CHARS = 500
MAX_VALUE_CHARS = 10_000
MAX_SOURCE_CHARS = 100
FACT_OPS = ("teach", "forget", "undo")
# Ridge of the least-squares re-scoring, against a code's squared norm of
# value_dim. It is small and only keeps the solve well-posed.
REFINE_RIDGE = 10.0
# Passages per batch when a document is written: bounds the memory of one
# file's passages and of the batched state update (see `_apply_passages`).
PASSAGE_BATCH = 256


@dataclass(frozen=True)
class MemoryConfig:
    """Sizes of the state, the write rule and the recall thresholds.

    The state contains `fact_key_dim * fact_value_dim + passage_key_dim *
    passage_value_dim` float32 numbers plus one float32 count per key slot,
    whatever the number of items written.
    """

    fact_key_dim: int = 1 << 15
    fact_value_dim: int = 256
    # Passages get fewer key slots and longer codes than facts. With 15,000
    # passages of the Python manual, recall was limited by the clean-up
    # crosstalk between codes, not by key collisions. Recall@5 from the
    # state was 0.23 at 32768 x 240 and 0.63 at 8192 x 960, the same bytes.
    passage_key_dim: int = 1 << 13
    passage_value_dim: int = 960
    fact_threshold: float = 0.15
    passage_threshold: float = 0.15
    checkpoint_every: int = 2000
    # "cleanup" (the default, see partition.py) or "delta", the plain delta
    # rule for every write, kept to measure the difference.
    write_rule: str = "cleanup"
    # Add MiniLM LSH buckets (semantic.py) to fact keys.
    semantic: bool = True
    # Clean-up re-scores this many best candidates by least squares (0: off).
    refine_top: int = 32
    # Re-ranking of the state's best `rerank_top` fact candidates: their
    # order becomes state score + rerank_weight * the cosine of the
    # question's and the candidate subject's MiniLM sketches, read from
    # their logged semantic buckets (see `_rerank_facts`). 0 turns it off.
    # Both values were chosen on half of the evaluation facts' subjects.
    rerank_weight: float = 0.3
    rerank_top: int = 10
    # Re-ranking of the state's best `passage_rerank_top` passage
    # candidates by the cosine of their hashed keys with the question's,
    # recomputed from the passage texts in SQLite (see `_rerank_passages`).
    # 0 turns it off.
    passage_rerank_top: int = 100

    def __post_init__(self) -> None:
        if self.write_rule not in ("cleanup", "delta"):
            raise ValueError(f"write_rule must be 'cleanup' or 'delta', got {self.write_rule!r}")
        if self.refine_top < 0:
            raise ValueError(f"refine_top must be 0 or more, got {self.refine_top}")
        if self.passage_rerank_top < 0:
            raise ValueError(f"passage_rerank_top must be 0 or more, got {self.passage_rerank_top}")
        if self.rerank_weight < 0 or self.rerank_top < 0:
            raise ValueError(
                f"rerank_weight and rerank_top must be 0 or more, got {self.rerank_weight} and {self.rerank_top}"
            )
        for name in ("fact_key_dim", "fact_value_dim", "passage_key_dim", "passage_value_dim", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def metadata(self) -> dict[str, str]:
        """Return the dimensions that a state file must match."""
        return {
            "fact_key_dim": str(self.fact_key_dim),
            "fact_value_dim": str(self.fact_value_dim),
            "passage_key_dim": str(self.passage_key_dim),
            "passage_value_dim": str(self.passage_value_dim),
            "write_rule": self.write_rule,
            "semantic": str(self.semantic),
        }


# Leading words that do not change which thing a subject names, so "my
# locker code", "the locker code" and "locker code" share one lookup key. All
# of them are key-feature stop words too, so recall already ignores them.
LEADING_DETERMINERS = frozenset({"the", "a", "an", "my", "our"})


def normalize_subject(subject: str) -> str:
    """Return the lookup key of a subject.

    The key is case-folded and single-spaced, without end punctuation and
    without leading determiners; a subject that is only determiners keeps
    its last word. Every lookup of a subject (live fact, history, undo)
    goes through this function, and migration 3 re-keyed older logs with it.
    """
    words = subject.casefold().split()
    while len(words) > 1 and words[0].strip(".,;:") in LEADING_DETERMINERS:
        words = words[1:]
    return " ".join(words).strip(" .!?;:,")


def _check_text(name: str, text: Any, max_chars: int) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise ValueError(f"{name} is empty; give a non-empty {name}")
    if len(text) > max_chars:
        raise ValueError(f"{name} is {len(text)} characters long; the maximum is {max_chars}")
    if "\x00" in text:
        raise ValueError(f"{name} contains a NUL character; remove it")
    return text


class _LiveItems:
    """The ids of a partition's live items and their codes, kept in step.

    Adding appends a row and removing moves the last row into the gap, so
    each change costs O(value_dim) and recall never regenerates all codes.
    The ±1 codes are kept as int8, a quarter of the RAM of float32.
    """

    def __init__(self, value_dim: int, salt: int):
        self.value_dim = value_dim
        self.salt = salt
        self.ids: dict[int, int] = {}  # item id -> row in the code matrix
        self._order: list[int] = []  # row -> item id
        self._codes = torch.zeros(0, value_dim, dtype=torch.int8)  # (capacity, Dv)

    def add(self, item_id: int) -> None:
        if item_id in self.ids:
            return
        row = len(self._order)
        if row == self._codes.shape[0]:
            grown = torch.zeros(max(64, 2 * row), self.value_dim, dtype=torch.int8)  # (capacity, Dv)
            grown[:row] = self._codes[:row]
            self._codes = grown
        self._codes[row] = item_codes([item_id], self.value_dim, self.salt)[0].to(torch.int8)
        self.ids[item_id] = row
        self._order.append(item_id)

    def add_many(self, item_ids: list[int]) -> None:
        """Add several items at once; their codes are generated in one call."""
        new = [item_id for item_id in dict.fromkeys(item_ids) if item_id not in self.ids]
        if not new:
            return
        start = len(self._order)
        needed = start + len(new)
        if needed > self._codes.shape[0]:
            grown = torch.zeros(max(64, 2 * self._codes.shape[0], needed), self.value_dim, dtype=torch.int8)
            grown[:start] = self._codes[:start]
            self._codes = grown
        self._codes[start:needed] = item_codes(new, self.value_dim, self.salt).to(torch.int8)
        for offset, item_id in enumerate(new):
            self.ids[item_id] = start + offset
        self._order.extend(new)

    def discard(self, item_id: int) -> None:
        row = self.ids.pop(item_id, None)
        if row is None:
            return
        last_id = self._order.pop()
        if last_id != item_id:
            self._codes[row] = self._codes[len(self._order)]
            self._order[row] = last_id
            self.ids[last_id] = row

    def codes(self) -> tuple[np.ndarray, torch.Tensor]:
        """Return the live ids (N,) and their float32 codes (N, Dv), row for row."""
        count = len(self._order)
        return np.asarray(self._order, dtype=np.int64), self._codes[:count].float()


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Yield lists of up to `size` consecutive items."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _merge_by_score(first: list[MemoryItem], second: list[MemoryItem]) -> list[MemoryItem]:
    """Merge two ranked lists by score, keeping each list's own order.

    The fact list may be re-ranked (not sorted by score), so a plain sort
    would undo the re-ranking.
    """
    merged: list[MemoryItem] = []
    i = j = 0
    while i < len(first) and j < len(second):
        if first[i].score >= second[j].score:
            merged.append(first[i])
            i += 1
        else:
            merged.append(second[j])
            j += 1
    return merged + first[i:] + second[j:]


def _warm_up_encoder() -> None:
    try:
        get_encoder()
    except MemoryError_ as error:
        # The first write or question raises the same error to its caller.
        logger.warning("sentence encoder not loaded: %s", error)
    except Exception as error:  # noqa: BLE001 - a background thread must not print a traceback
        # get_encoder keeps nothing after a failure, so the first write or
        # question loads the encoder again in its own thread and reports any
        # error there. One failure seen here came from importing transformers
        # in two threads at once.
        logger.debug("background encoder load failed, retrying on first use: %s", error, exc_info=True)


class Memory:
    """One user's memory: state, log, lock. Open it with `Memory.open()`.

    Every public method is safe to call from several threads of one process;
    other processes are kept out by the folder's lock.
    """

    def __init__(self, data_dir: Path, wait: float, config: MemoryConfig, warm_up_encoder: bool = True):
        self.data_dir = Path(data_dir)
        self.config = config
        self.state_path = self.data_dir / STATE_NAME
        self.chat_state_path = self.data_dir / CHAT_STATE_NAME
        self._mutex = threading.RLock()
        self._closed = False
        try:
            paths.ensure_private_dir(self.data_dir)
        except OSError as error:
            raise StorageError(f"cannot create the memory folder {self.data_dir}: {error.strerror}") from error
        self._lock = MemoryLock(self.data_dir, wait=wait)
        if config.semantic and warm_up_encoder:
            # Load the sentence encoder in the background, so that the first
            # teach or question does not wait seconds for it. transformers'
            # lazy top-level module is not safe to import from two threads at
            # once (transformers 5.25: another thread's `from transformers
            # import AutoConfig` failed), so its names are resolved here first.
            import transformers

            transformers.AutoConfig, transformers.AutoModel, transformers.AutoTokenizer  # noqa: B018
            threading.Thread(target=_warm_up_encoder, name="encoder-warm-up", daemon=True).start()
        try:
            self.db = store.open_database(self.data_dir)
            self._init_state()
        except BaseException:
            self._lock.release()
            raise

    # Opening, saving, closing -------------------------------------------------

    @classmethod
    def open(
        cls, data_dir: str | os.PathLike | None = None, wait: float = 0.0, config: MemoryConfig | None = None,
        warm_up_encoder: bool = True,
    ) -> Memory:
        """Open (creating when needed) the memory in `data_dir` and lock it.

        Args:
            data_dir: the memory folder; None means `app.paths.data_dir()`.
            wait: seconds to wait for another process to release the memory.
            config: state sizes; must match those of an existing state file.
            warm_up_encoder: load the sentence encoder in a background thread
                now, so the first teach or question does not wait for it.
                Pass False where only documents are written (ingest), which
                never use the encoder.

        Raises:
            MemoryInUseError: another process still has the memory open after `wait`.
            StateFileError: the state file is corrupt or foreign (left untouched).
            StorageError: the folder or log cannot be created or opened.
        """
        folder = Path(data_dir).expanduser() if data_dir is not None else paths.data_dir()
        if folder.exists() and not folder.is_dir():
            raise StorageError(f"memory folder {folder} is a file, not a folder; give a folder path")
        return cls(folder, wait, config or MemoryConfig(), warm_up_encoder)

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _new_partitions(self) -> None:
        c = self.config
        self.facts_state = DeltaRulePartition(c.fact_key_dim, c.fact_value_dim, FACT_WEIGHTS)
        self.passages_state = DeltaRulePartition(c.passage_key_dim, c.passage_value_dim, PASSAGE_WEIGHTS)
        self.tokens_streamed = torch.zeros(1, dtype=torch.int64)
        self.last_write_id = 0

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Return every tensor of the state (what the state file stores)."""
        tensors = {**self.facts_state.tensors("facts"), **self.passages_state.tensors("passages")}
        tensors["tokens_streamed"] = self.tokens_streamed
        return tensors

    def _init_state(self) -> None:
        self._new_partitions()
        if self.state_path.exists():
            tensors, metadata = state_file.load_state(self.state_path)
            expected = self.config.metadata()
            found = {k: metadata.get(k) for k in expected}
            if found != expected:
                raise StateFileError(str(self.state_path), f"it has state sizes {found}, expected {expected}")
            try:
                self.facts_state.load_tensors(tensors, "facts")
                self.passages_state.load_tensors(tensors, "passages")
                self.tokens_streamed = tensors["tokens_streamed"].clone()
                self.last_write_id = int(metadata["last_write_id"])
            except (KeyError, ValueError) as error:
                raise StateFileError(str(self.state_path), f"a tensor is missing or malformed ({error})") from error
            replay_needed = True
        else:
            replay_needed = False
            if self._count("SELECT COUNT(*) FROM writes"):
                logger.warning("state file %s is missing; rebuilding it from the log", self.state_path)
                replay_needed = True

        self.facts_live = _LiveItems(self.config.fact_value_dim, FACT_SALT)
        self.passages_live = _LiveItems(self.config.passage_value_dim, PASSAGE_SALT)
        last_logged = self._count("SELECT COALESCE(MAX(id), 0) FROM writes")
        if self.last_write_id > last_logged:
            raise StateFileError(
                str(self.state_path),
                f"it contains write {self.last_write_id} but the log ends at write {last_logged} "
                "(the state file belongs to another log)",
            )
        replayed = self._replay(after=self.last_write_id) if replay_needed else 0
        self._load_live_items()
        self._pending = 0
        if replayed or not self.state_path.exists():
            if replayed:
                logger.info("replayed %d logged writes into the state", replayed)
            self.save()

    def _count(self, sql: str, params: tuple = ()) -> int:
        return int(self.db.conn.execute(sql, params).fetchone()[0])

    def _load_live_items(self) -> None:
        for (write_id,) in self.db.conn.execute("SELECT write_id FROM facts"):
            self.facts_live.add(write_id)
        for (passage_id,) in self.db.conn.execute("SELECT id FROM passages WHERE removed_by IS NULL"):
            self.passages_live.add(passage_id)

    def _replay(self, after: int) -> int:
        rows = self.db.conn.execute(f"SELECT {store.WRITE_COLUMNS} FROM writes WHERE id > ? ORDER BY id", (after,))
        count = 0
        for row in rows.fetchall():
            self._apply(store.write_record(row))
            count += 1
        return count

    def replayed_state_tensors(self) -> dict[str, torch.Tensor]:
        """Rebuild the state from an empty one by replaying the whole log; return its tensors.

        The live state is left as it is. Used to check that the log and the
        state agree (they must be equal bit for bit).
        """
        with self._mutex:
            self._check_open()
            saved = (self.facts_state, self.passages_state, self.tokens_streamed, self.last_write_id)
            try:
                self._new_partitions()
                self._replay(after=0)
                return {name: t.clone() for name, t in self.state_tensors().items()}
            finally:
                self.facts_state, self.passages_state, self.tokens_streamed, self.last_write_id = saved

    def save(self) -> None:
        """Checkpoint the state to its file atomically.

        Raises:
            StorageError: the file cannot be written. The previous state file
                and the in-memory state stay usable, and the log still contains
                every write, so nothing is lost.
        """
        with self._mutex:
            metadata = self.config.metadata()
            # Zero-padded so the header, and with it the file size, never changes.
            metadata["last_write_id"] = f"{self.last_write_id:020d}"
            state_file.save_state(self.state_path, self.state_tensors(), metadata)
            self._pending = 0

    def _after_write(self, count: int) -> None:
        self._pending += count
        if self._pending >= self.config.checkpoint_every:
            try:
                self.save()
            except StorageError as error:
                # The log contains the write, so it is safe. The next save or open retries.
                logger.warning("state checkpoint failed; the log still contains every write: %s", error)

    def close(self) -> None:
        """Checkpoint the state and release the lock.

        Raises:
            StorageError: the final checkpoint failed; the lock is released
                anyway and the next open replays the log.
        """
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            try:
                if self._pending:
                    self.save()
            finally:
                self.db.conn.close()
                self._lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise MemoryError_(f"the memory in {self.data_dir} is closed; open it again with Memory.open()")

    # Applying log rows to the state -------------------------------------------

    @torch.no_grad()
    def _apply(self, row: WriteRecord) -> None:
        """Apply one committed log row to the state (the live path and replay share this)."""
        with one_torch_thread():
            if row.op in FACT_OPS:
                self._apply_fact(row)
            elif row.op in ("ingest", "remove"):
                self._apply_passages(row)
            else:
                raise MemoryError_(f"log row {row.write_id} has an unknown operation {row.op!r}")
        self.last_write_id = row.write_id

    def _apply_fact(self, row: WriteRecord) -> None:
        partition = self.facts_state
        stored = self.db.conn.execute("SELECT semantic FROM writes WHERE id = ?", (row.write_id,)).fetchone()[0]
        buckets = json.loads(stored) if stored else None
        features = partition.features(normalize_subject(row.subject or ""), buckets)
        if row.supersedes is None and row.live_after is not None:
            partition.add_key(features)
        key = partition.key(features)
        if key is not None:
            if row.live_after is None:
                partition.erase(key)
            else:
                value = item_codes([row.live_after], partition.value_dim, FACT_SALT)[0]  # (Dv,)
                previous = None
                if self.config.write_rule == "delta":
                    previous = partition.read(key).float()  # (Dv,)
                elif row.supersedes is not None:
                    previous = item_codes([row.supersedes], partition.value_dim, FACT_SALT)[0]  # (Dv,)
                partition.write(key, value, previous)
                self.tokens_streamed += len(content_words(row.subject or "")) + len((row.value or "").split())
        if row.supersedes is not None and row.live_after is None:
            partition.remove_key(features)

    def _apply_passages(self, row: WriteRecord) -> None:
        """Forget the passages the row removed, then write the ones it added, in batches.

        Removals are plain delta-rule erases, one passage after another,
        because each erase reads what the previous ones left. Additions are
        written `PASSAGE_BATCH` at a time (`add_keys_and_write`), in passage
        id order, so the live path and replay form the same batches.
        """
        partition = self.passages_state
        removed = self.db.conn.execute(
            "SELECT id, text FROM passages WHERE removed_by = ? ORDER BY id", (row.write_id,)
        )
        while batch := removed.fetchmany(PASSAGE_BATCH):
            for _, text in batch:
                features = partition.features(text)
                key = partition.key(features)
                if key is not None:
                    partition.erase(key)
                    partition.remove_key(features)
        added = self.db.conn.execute(
            "SELECT id, text FROM passages WHERE added_by = ? ORDER BY id", (row.write_id,)
        )
        while batch := added.fetchmany(PASSAGE_BATCH):
            ids, features, words = [], [], 0
            for passage_id, text in batch:
                passage_features = partition.features(text)
                if len(passage_features[0]) == 0:
                    continue
                ids.append(passage_id)
                features.append(passage_features)
                words += len(text.split())
            if ids:
                partition.add_keys_and_write(features, item_codes(ids, partition.value_dim, PASSAGE_SALT))
                self.tokens_streamed += words

    # Facts ----------------------------------------------------------------------

    def _live_fact(self, subject_key: str) -> int | None:
        row = self.db.conn.execute("SELECT write_id FROM facts WHERE subject_key = ?", (subject_key,)).fetchone()
        return row[0] if row else None

    def _log_fact_write(
        self, op: str, subject: str, value: str | None, source: str, supersedes: int | None, undoes: int | None = None,
        restore: int | None = None,
    ) -> WriteRecord:
        """Commit one fact row and the live-fact change, then apply it to the state.

        `restore` is the write id that becomes live again (undo); a teach makes
        itself live, and a forget leaves nothing live.
        """
        subject_key = normalize_subject(subject)
        buckets = self._subject_buckets(subject_key)
        with store.transaction(self.db, f"write {op} of {subject!r} to") as conn:
            cursor = conn.execute(
                "INSERT INTO writes (op, subject, subject_key, value, source, created_at, supersedes, undoes, semantic) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (op, subject, subject_key, value, source, store.utc_now(), supersedes, undoes, buckets),
            )
            write_id = cursor.lastrowid
            live_after = write_id if op == "teach" else restore
            conn.execute("UPDATE writes SET live_after = ? WHERE id = ?", (live_after, write_id))
            if live_after is None:
                conn.execute("DELETE FROM facts WHERE subject_key = ?", (subject_key,))
            else:
                conn.execute(
                    "INSERT INTO facts (subject_key, write_id) VALUES (?, ?) "
                    "ON CONFLICT(subject_key) DO UPDATE SET write_id = excluded.write_id",
                    (subject_key, live_after),
                )
        record = store.get_write(self.db, write_id)
        self._apply(record)
        if supersedes is not None:
            self.facts_live.discard(supersedes)
        if live_after is not None:
            self.facts_live.add(live_after)
        self._after_write(1)
        logger.debug("logged write %d: %s %r", write_id, op, subject)
        return record

    def _subject_buckets(self, subject_key: str) -> str | None:
        """Return the semantic buckets (JSON) of a subject, reusing those its earlier writes logged.

        Reuse keeps every write of one subject under exactly the same key.
        """
        if not self.config.semantic:
            return None
        row = self.db.conn.execute(
            "SELECT semantic FROM writes WHERE subject_key = ? AND semantic IS NOT NULL ORDER BY id DESC LIMIT 1",
            (subject_key,),
        ).fetchone()
        if row:
            return row[0]
        return json.dumps(semantic_buckets(subject_key))

    def teach(self, subject: str, value: str, source: str = "cli") -> WriteRecord:
        """Store `value` for `subject`; a subject taught before is overwritten.

        The old value stays readable in `history(subject)`.

        Raises:
            ValueError: empty or over-long subject, value or source, or a
                subject without a single word to recall it by.
            StorageError: the log cannot be written; memory is unchanged.
        """
        subject = _check_text("subject", subject, MAX_SUBJECT_CHARS)
        value = _check_text("value", value, MAX_VALUE_CHARS)
        source = _check_text("source", source, MAX_SOURCE_CHARS)
        if not content_words(normalize_subject(subject)):
            raise ValueError(
                f"subject {subject!r} has no word to recall it by (only stop words or punctuation); "
                "name the thing, e.g. 'locker code'"
            )
        with self._mutex:
            self._check_open()
            live = self._live_fact(normalize_subject(subject))
            return self._log_fact_write("teach", subject, value, source, supersedes=live)

    def forget(self, subject: str, source: str = "cli") -> WriteRecord:
        """Erase `subject` from the state with a zero delta-rule write.

        Raises:
            UnknownSubjectError: memory has no live fact about `subject`.
            StorageError: the log cannot be written; memory is unchanged.
        """
        subject = _check_text("subject", subject, MAX_SUBJECT_CHARS)
        source = _check_text("source", source, MAX_SOURCE_CHARS)
        with self._mutex:
            self._check_open()
            live = self._live_fact(normalize_subject(subject))
            if live is None:
                raise UnknownSubjectError(subject)
            return self._log_fact_write("forget", subject, None, source, supersedes=live)

    def undo(self, write_id: int, source: str = "cli") -> WriteRecord:
        """Revert the fact write `write_id` (a teach, forget or undo) with a new logged write.

        The subject returns to the value that was live before that write (or
        becomes unknown if there was none). Only the latest write of a subject
        can be undone, so that an undo never silently discards a later value.

        Raises:
            UndoError: no such write, a document write, or a later write of the
                same subject exists.
        """
        if isinstance(write_id, bool) or not isinstance(write_id, int):
            raise TypeError(f"write_id must be an int, got {type(write_id).__name__}")
        with self._mutex:
            self._check_open()
            row = store.get_write(self.db, write_id)
            if row is None:
                raise UndoError(f"no write with id {write_id}; list writes with `hydra-chat facts --history SUBJECT`")
            if row.op not in FACT_OPS:
                raise UndoError(
                    f"write {write_id} is a document {row.op}, which undo does not revert; "
                    "re-run `hydra-chat ingest` on the folder instead"
                )
            live = self._live_fact(normalize_subject(row.subject))
            if live != row.live_after:
                latest = self.db.conn.execute(
                    "SELECT MAX(id) FROM writes WHERE subject_key = ?", (normalize_subject(row.subject),)
                ).fetchone()[0]
                raise UndoError(
                    f"write {write_id} is not the latest write of {row.subject!r} (write {latest} is); "
                    f"undo write {latest} first"
                )
            restored_value = None
            if row.supersedes is not None:
                restored_value = store.get_write(self.db, row.supersedes).value
            return self._log_fact_write(
                "undo", row.subject, restored_value, source, supersedes=live, undoes=write_id, restore=row.supersedes
            )

    def facts(self) -> list[Fact]:
        """Return the live facts, oldest value first."""
        with self._mutex:
            self._check_open()
            rows = self.db.conn.execute(
                "SELECT w.subject, w.value, w.id, w.created_at, w.source FROM facts f "
                "JOIN writes w ON w.id = f.write_id ORDER BY w.id"
            ).fetchall()
        return [Fact(subject=r[0], value=r[1], write_id=r[2], taught_at=r[3], source=r[4]) for r in rows]

    def forgotten_subjects(self) -> list[str]:
        """Return the subjects that were taught once and have no live fact now (forgotten or undone)."""
        ops = ", ".join("?" * len(FACT_OPS))
        with self._mutex:
            self._check_open()
            rows = self.db.conn.execute(
                f"SELECT w.subject FROM writes w WHERE w.id IN "
                f"(SELECT MAX(id) FROM writes WHERE op IN ({ops}) GROUP BY subject_key) "
                "AND w.live_after IS NULL ORDER BY w.id",
                FACT_OPS,
            ).fetchall()
        return [row[0] for row in rows]

    def history(self, subject: str) -> list[WriteRecord]:
        """Return every logged write of `subject`, oldest first (empty when never taught)."""
        with self._mutex:
            self._check_open()
            rows = self.db.conn.execute(
                f"SELECT {store.WRITE_COLUMNS} FROM writes WHERE subject_key = ? ORDER BY id",
                (normalize_subject(subject),),
            ).fetchall()
        return [store.write_record(r) for r in rows]

    def writes(self, after: int = 0) -> list[WriteRecord]:
        """Return the log rows with an id above `after`, oldest first."""
        with self._mutex:
            self._check_open()
            rows = self.db.conn.execute(
                f"SELECT {store.WRITE_COLUMNS} FROM writes WHERE id > ? ORDER BY id", (after,)
            ).fetchall()
        return [store.write_record(r) for r in rows]

    # Recall ---------------------------------------------------------------------

    def _decode(
        self, partition: DeltaRulePartition, live: _LiveItems, question: str, k: int, buckets: list[int] | None
    ) -> list[tuple[int, float]]:
        """Read the state under the question's key and clean up against the live codes.

        The clean-up score of item i is c_i . r / value_dim, which is about
        the similarity of the question's key to item i's key plus crosstalk
        from the codes of the other items. The `refine_top` best candidates
        are then re-scored together by least squares (r ~ sum_j a_j c_j over
        them), which removes their crosstalk on each other.
        """
        if not live.ids:
            return []
        key = partition.key(partition.features(question, buckets))
        if key is None:
            return []
        readout = partition.read(key)  # (Dv,) float64
        ids, codes = live.codes()  # (N,), (N, Dv)
        scores = codes @ readout.float() / partition.value_dim  # (N,)
        m = min(self.config.refine_top, len(ids))
        if m > 1:
            top = torch.topk(scores, m).indices  # (m,)
            candidates = codes[top].double()  # (m, Dv)
            gram = candidates @ candidates.T + REFINE_RIDGE * torch.eye(m, dtype=torch.float64)  # (m, m)
            refined = torch.linalg.solve(gram, candidates @ readout) * (1.0 + REFINE_RIDGE / partition.value_dim)
            scores[top] = refined.float()
        top = torch.topk(scores, min(k, len(ids)))
        return [(int(ids[i]), float(s)) for s, i in zip(top.values, top.indices)]

    def recall(self, question: str, k: int = 5) -> Recall:
        """Return the `k` best memory items for `question`, facts and passages merged by score.

        Fact candidates are re-ranked first when `MemoryConfig.rerank_weight`
        is above 0 (see `_rerank_facts`); their scores stay the state's.
        `Recall.known` is True when the best item clears its kind's threshold
        (`MemoryConfig.fact_threshold` or `passage_threshold`).
        """
        question = _check_text("question", question, MAX_VALUE_CHARS)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        with self._mutex, one_torch_thread():
            self._check_open()
            buckets = semantic_buckets(question) if self.config.semantic and self.facts_live.ids else None
            rerank = buckets is not None and self.config.rerank_weight > 0 and self.config.rerank_top > 1
            pool = max(k, self.config.rerank_top) if rerank else k
            facts = self._decode(self.facts_state, self.facts_live, question, pool, buckets)
            if rerank:
                facts = self._rerank_facts(facts, buckets)
            passage_pool = max(k, self.config.passage_rerank_top)
            passages = self._decode(self.passages_state, self.passages_live, question, passage_pool, None)
            if self.config.passage_rerank_top > 1:
                passages = self._rerank_passages(question, passages)
            passages = passages[:k]
            fact_items = [self._fact_item(i, s) for i, s in facts[:k]]
            passage_items = [self._passage_item(i, s) for i, s in passages]
        items = _merge_by_score(fact_items, passage_items)[:k]
        known = any(
            item.score >= (self.config.fact_threshold if item.kind == "fact" else self.config.passage_threshold)
            for item in items
        )
        threshold = min(self.config.fact_threshold, self.config.passage_threshold)
        return Recall(question=question, items=items, known=known, threshold=threshold)

    def _rerank_facts(self, facts: list[tuple[int, float]], buckets: list[int]) -> list[tuple[int, float]]:
        """Reorder the state's fact candidates by state score plus the weighted sketch cosine.

        The candidates and their scores come from the state. The re-ranking
        reads each candidate's semantic buckets from its log row and
        compares them with the question's (`semantic.sketch_cosine`). That
        separates attributes of one person ("How do I call X?": phone number
        or allergy of X), which the buckets in the key separate only
        coarsely. Scores stay the state's, so the "unknown" threshold is not
        affected, and only the order changes.
        """
        weight = self.config.rerank_weight
        ranked = []
        for write_id, score in facts:
            stored = self.db.conn.execute("SELECT semantic FROM writes WHERE id = ?", (write_id,)).fetchone()
            subject_buckets = json.loads(stored[0]) if stored and stored[0] else None
            similarity = sketch_cosine(buckets, subject_buckets) if subject_buckets else 0.0
            ranked.append((score + weight * similarity, write_id, score))
        ranked.sort(key=lambda entry: entry[0], reverse=True)
        return [(write_id, score) for _, write_id, score in ranked]

    def _rerank_passages(self, question: str, passages: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """Reorder the state's passage candidates by the cosine of their keys with the question's key.

        The candidates and their scores come from the state. The re-ranking
        reads each candidate's text from SQLite and hashes it again into
        the same IDF-weighted key the state was written with, so the order
        is that of exact search restricted to the candidates. With many
        passages the clean-up scores carry the crosstalk of every other
        code, while the keys' cosine does not. Scores stay the state's, so
        the "unknown" threshold is not affected.
        """
        partition = self.passages_state
        query = partition.key(partition.features(question))
        if query is None or not passages:
            return passages
        query_weights = dict(zip(query[0].tolist(), query[1].tolist()))
        ranked = []
        for passage_id, score in passages:
            row = self.db.conn.execute("SELECT text FROM passages WHERE id = ?", (passage_id,)).fetchone()
            key = partition.key(partition.features(row[0])) if row else None
            cosine = 0.0
            if key is not None:
                cosine = sum(query_weights.get(slot, 0.0) * weight for slot, weight in zip(key[0].tolist(), key[1].tolist()))
            ranked.append((cosine, score, passage_id))
        ranked.sort(key=lambda entry: (entry[0], entry[1]), reverse=True)
        return [(passage_id, score) for _, score, passage_id in ranked]

    def _fact_item(self, write_id: int, score: float) -> MemoryItem:
        row = store.get_write(self.db, write_id)
        origin = f"taught {row.created_at[:10]} via {row.source}"
        return MemoryItem(
            kind="fact", text=f"{row.subject}: {row.value}", subject=row.subject, value=row.value,
            origin=origin, score=score, item_id=write_id,
        )

    def _passage_item(self, passage_id: int, score: float) -> MemoryItem:
        path, start, text = self.db.conn.execute(
            'SELECT path, start, text FROM passages WHERE id = ?', (passage_id,)
        ).fetchone()
        return MemoryItem(
            kind="passage", text=text, subject=None, value=None, origin=f"{path}:{start}", score=score,
            item_id=passage_id,
        )

    # Documents ------------------------------------------------------------------

    def ingest(self, folder: str | os.PathLike, progress: Callable | None = None, cancel: Any = None):
        """Bring the memory's record of `folder` up to date (see `app.ingest.pipeline`).

        Returns:
            the pipeline's `IngestReport`.
        """
        from app.ingest.pipeline import ingest_folder

        self._check_open()
        return ingest_folder(self, folder, progress=progress, cancel=cancel)

    def _live_passage_count(self, conn, path: str) -> int:
        return int(
            conn.execute("SELECT COUNT(*) FROM passages WHERE path = ? AND removed_by IS NULL", (path,)).fetchone()[0]
        )

    def add_document(self, path: str, sha256: str, size: int, mtime: float, passages: Iterable[Any]) -> int:
        """Write a document's passages, replacing (forgetting) an older version of `path`.

        Args:
            passages: objects with `text`, `start` and `end` (character offsets
                in the extracted text).

        Returns:
            the number of passages written.
        """
        path = _check_text("path", path, 4096)
        with self._mutex:
            self._check_open()
            with store.transaction(self.db, f"write document {path} to") as conn:
                cursor = conn.execute(
                    "INSERT INTO writes (op, subject, subject_key, value, source, created_at, document, passages) "
                    "VALUES ('ingest', NULL, NULL, ?, 'ingest', ?, ?, 0)",
                    (sha256, store.utc_now(), path),
                )
                write_id = cursor.lastrowid
                conn.execute(
                    "UPDATE passages SET removed_by = ? WHERE path = ? AND removed_by IS NULL", (write_id, path)
                )
                # Passages are inserted in batches as the iterator yields
                # them, so one file's passages never sit in memory together.
                count = 0
                for batch in _batches(passages, PASSAGE_BATCH):
                    conn.executemany(
                        'INSERT INTO passages (path, start, "end", text, added_by) VALUES (?, ?, ?, ?, ?)',
                        [(path, int(p.start), int(p.end), str(p.text), write_id) for p in batch],
                    )
                    count += len(batch)
                conn.execute("UPDATE writes SET passages = ? WHERE id = ?", (count, write_id))
                conn.execute(
                    "INSERT INTO documents (path, sha256, size, mtime, status, reason, passages, write_id, updated_at) "
                    "VALUES (?, ?, ?, ?, 'ingested', '', ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                    "sha256 = excluded.sha256, size = excluded.size, mtime = excluded.mtime, status = excluded.status, "
                    "reason = excluded.reason, passages = excluded.passages, write_id = excluded.write_id, "
                    "updated_at = excluded.updated_at",
                    (path, sha256, int(size), float(mtime), count, write_id, store.utc_now()),
                )
            self._apply_document_row(write_id)
            self._after_write(max(count, 1))
        return count

    def _apply_document_row(self, write_id: int) -> None:
        self._apply(store.get_write(self.db, write_id))
        removed = self.db.conn.execute("SELECT id FROM passages WHERE removed_by = ?", (write_id,))
        for (passage_id,) in removed:
            self.passages_live.discard(passage_id)
        added = self.db.conn.execute("SELECT id FROM passages WHERE added_by = ? ORDER BY id", (write_id,))
        while batch := added.fetchmany(PASSAGE_BATCH):
            self.passages_live.add_many([passage_id for (passage_id,) in batch])

    def _log_removal(self, conn, path: str) -> int:
        cursor = conn.execute(
            "INSERT INTO writes (op, subject, subject_key, value, source, created_at, document, passages) "
            "VALUES ('remove', NULL, NULL, NULL, 'ingest', ?, ?, 0)",
            (store.utc_now(), path),
        )
        write_id = cursor.lastrowid
        conn.execute("UPDATE passages SET removed_by = ? WHERE path = ? AND removed_by IS NULL", (write_id, path))
        return write_id

    def remove_document(self, path: str) -> None:
        """Forget every passage of `path` and drop its record (a file deleted from the folder)."""
        with self._mutex:
            self._check_open()
            with store.transaction(self.db, f"remove document {path} from") as conn:
                write_id = self._log_removal(conn, path)
                conn.execute("DELETE FROM documents WHERE path = ?", (path,))
            self._apply_document_row(write_id)
            self._after_write(1)

    def record_file_status(self, path: str, sha256: str, size: int, mtime: float, status: str, reason: str) -> None:
        """Record a file that was not ingested (skipped or failed) with the reason.

        If an older version of the file had passages, they are forgotten first.
        """
        with self._mutex:
            self._check_open()
            write_id = None
            with store.transaction(self.db, f"record file {path} in") as conn:
                if self._live_passage_count(conn, path):
                    write_id = self._log_removal(conn, path)
                conn.execute(
                    "INSERT INTO documents (path, sha256, size, mtime, status, reason, passages, write_id, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                    "sha256 = excluded.sha256, size = excluded.size, mtime = excluded.mtime, status = excluded.status, "
                    "reason = excluded.reason, passages = 0, write_id = excluded.write_id, "
                    "updated_at = excluded.updated_at",
                    (path, sha256 or "", int(size), float(mtime), status, reason or "", write_id, store.utc_now()),
                )
            if write_id is not None:
                self._apply_document_row(write_id)
                self._after_write(1)

    def documents(self) -> list[DocumentRecord]:
        """Return every file the memory has recorded, by path."""
        with self._mutex:
            self._check_open()
            rows = list(self.db.query("SELECT * FROM documents ORDER BY path"))
        return [store.document_record(r) for r in rows]

    # Conversation -------------------------------------------------------------

    def log_turn(self, role: str, text: str) -> None:
        """Append one chat turn ("user" or "assistant") to the log."""
        if role not in ("user", "assistant", "system"):
            raise ValueError(f"role must be 'user', 'assistant' or 'system', got {role!r}")
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        with self._mutex:
            self._check_open()
            with store.transaction(self.db, "log a chat turn to") as conn:
                conn.execute("INSERT INTO turns (role, text, created_at) VALUES (?, ?, ?)", (role, text, store.utc_now()))

    def turns(self, limit: int = 100) -> list[tuple[str, str, str]]:
        """Return the last `limit` chat turns as (role, text, created_at), oldest first."""
        with self._mutex:
            self._check_open()
            rows = self.db.conn.execute(
                "SELECT role, text, created_at FROM turns ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [tuple(r) for r in reversed(rows)]

    def save_chat_state(self, state) -> None:
        """Save the chat model's `HydraState` beside the memory, atomically."""
        with self._mutex:
            self._check_open()
            tmp = self.chat_state_path.with_name(f".{CHAT_STATE_NAME}.{os.getpid()}.tmp")
            try:
                state.save(tmp)
                os.chmod(tmp, 0o600)
                with open(tmp, "rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(tmp, self.chat_state_path)
            except OSError as error:
                tmp.unlink(missing_ok=True)
                raise StorageError(f"cannot save the chat state to {self.chat_state_path}: {error.strerror}") from error
            state_file.fsync_dir(self.data_dir)

    def load_chat_state(self, config):
        """Return the saved chat `HydraState` for the model `config`, or None when there is none.

        A state saved by a model with another config is not used (logged), so
        a changed model starts a fresh conversation.
        """
        from hydralm.state import HydraState

        with self._mutex:
            self._check_open()
            if not self.chat_state_path.exists():
                return None
            try:
                return HydraState.load(self.chat_state_path, config)
            except ValueError as error:
                logger.warning("not using the saved chat state %s: %s", self.chat_state_path, error)
                return None

    # Stats ----------------------------------------------------------------------

    def state_nbytes(self) -> int:
        """Return the bytes of the state tensors."""
        return sum(t.numel() * t.element_size() for t in self.state_tensors().values())

    def stats(self) -> MemoryStats:
        """Return the sizes of the state and the counts in the log."""
        with self._mutex:
            self._check_open()
            file_bytes = self.state_path.stat().st_size if self.state_path.exists() else 0
            return MemoryStats(
                state_bytes=self.state_nbytes(),
                state_file_bytes=file_bytes,
                facts=self._count("SELECT COUNT(*) FROM facts"),
                documents=self._count("SELECT COUNT(*) FROM documents WHERE status = 'ingested'"),
                passages=self._count("SELECT COUNT(*) FROM passages WHERE removed_by IS NULL"),
                writes=self._count("SELECT COUNT(*) FROM writes"),
                tokens_streamed=int(self.tokens_streamed.item()),
            )

    # Archives -------------------------------------------------------------------

    def export(self, archive: str | os.PathLike) -> Path:
        """Write the memory (state, log, chat state) into one tar archive; return its path."""
        from app.memory.archive import export_memory

        with self._mutex:
            self._check_open()
            self.save()
            return export_memory(self, Path(archive))

    @classmethod
    def import_archive(cls, archive: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> None:
        """Replace the memory in `data_dir` with the one in `archive` (see `archive.import_memory`)."""
        from app.memory.archive import import_memory

        folder = Path(data_dir).expanduser() if data_dir is not None else paths.data_dir()
        import_memory(Path(archive), folder)
