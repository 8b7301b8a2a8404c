"""Sparse hashed key features of subjects, questions and passages.

A text becomes a few hundred signed features hashed into `key_dim` slots:

- content words (stop words dropped) and adjacent word bigrams;
- unordered pairs of content words within a small window, which match a
  question that names the same things in another order ("Zofia Rahman's
  favourite colour" and "favourite colour of Zofia Rahman");
- character 3- to 5-grams of each content word at a low weight, which match
  inflections ("manages" and "manager", "allergic" and "allergy").

Each feature gets a random sign from its hash, so colliding features cancel
on average instead of adding up. The caller multiplies the weights by an IDF
factor kept in the state (see `partition.py`) and normalises the key.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

import numpy as np

TOKEN_RE = re.compile(r"[^\W_]+(?:[-.:/][^\W_]+)*")

STOP_WORDS = frozenset(
    """a an the of at in on to is are was were be been am what what's whats who whom whose which
    when where why how do does did done i me my mine we our you your it its this that these those
    there here for with and or but by as from into about can could should would will shall may
    might must use uses used like best get got please tell know now""".split()
)


@dataclass(frozen=True)
class FeatureWeights:
    """Relative weights of the feature kinds, and the pair window in words."""

    word: float = 1.0
    bigram: float = 1.0
    pair: float = 1.0
    char: float = 0.1
    semantic: float = 3.0
    pair_window: int = 8
    char_min: int = 3
    char_max: int = 5


FACT_WEIGHTS = FeatureWeights()
PASSAGE_WEIGHTS = FeatureWeights(pair=0.5, char=0.05, pair_window=3, char_min=4, char_max=4)


def tokenize(text: str) -> list[str]:
    """Split `text` into lower-case words; a possessive 's is dropped."""
    text = text.casefold().replace("\u2019", "'").replace("'s ", " ").replace("'s?", "?")
    if text.endswith("'s"):
        text = text[:-2]
    return TOKEN_RE.findall(text)


def content_words(text: str) -> list[str]:
    """Return the words of `text` that are not stop words, in order."""
    return [w for w in tokenize(text) if w not in STOP_WORDS]


@functools.lru_cache(maxsize=1 << 18)
def _hash(kind: str, feature: str) -> int:
    digest = hashlib.blake2b(f"{kind}\x1f{feature}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@functools.lru_cache(maxsize=1 << 16)
def _word_hashes(word: str, weights: FeatureWeights) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Return the hashes and weights of a word's own feature and its character n-grams."""
    hashes = [_hash("w", word)]
    weight_list = [weights.word]
    if weights.char > 0:
        padded = f"<{word}>"
        for n in range(weights.char_min, weights.char_max + 1):
            for i in range(len(padded) - n + 1):
                hashes.append(_hash("c", padded[i : i + n]))
                weight_list.append(weights.char)
    return tuple(hashes), tuple(weight_list)


def text_features(text: str, weights: FeatureWeights = FACT_WEIGHTS) -> list[tuple[str, str, float]]:
    """List the (kind, feature, weight) triples of `text`; repeats are kept."""
    words = content_words(text)
    out: list[tuple[str, str, float]] = []
    for word in words:
        out.append(("w", word, weights.word))
    for left, right in zip(words, words[1:]):
        out.append(("b", f"{left} {right}", weights.bigram))
    for pair in _pairs(words, weights):
        out.append(("p", pair, weights.pair))
    if weights.char > 0:
        for word in words:
            padded = f"<{word}>"
            for n in range(weights.char_min, weights.char_max + 1):
                for i in range(len(padded) - n + 1):
                    out.append(("c", padded[i : i + n], weights.char))
    return out


def _pairs(words: list[str], weights: FeatureWeights) -> list[str]:
    if weights.pair <= 0:
        return []
    pairs = []
    for i, left in enumerate(words):
        for right in words[i + 1 : i + 1 + weights.pair_window]:
            if left != right:
                a, b = (left, right) if left < right else (right, left)
                pairs.append(f"{a}+{b}")
    return pairs


def hashed_features(
    text: str, key_dim: int, weights: FeatureWeights = FACT_WEIGHTS, semantic_buckets: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Hash the features of `text`, and the semantic LSH buckets when given, into `key_dim` slots.

    The buckets (see `semantic.py`) share `weights.semantic` between them,
    so their part of the key has the same norm whatever the table count.

    Returns:
        (index, value): sorted unique slot indices (int64, shape (n,)) and the
        summed signed weights in them (float64, shape (n,)); slots whose
        features cancelled exactly are dropped.
    """
    words = content_words(text)
    hashes: list[int] = []
    weight_list: list[float] = []
    for word in words:
        word_hashes, word_weights = _word_hashes(word, weights)
        hashes.extend(word_hashes)
        weight_list.extend(word_weights)
    bigrams = [_hash("b", f"{left} {right}") for left, right in zip(words, words[1:])]
    hashes.extend(bigrams)
    weight_list.extend([weights.bigram] * len(bigrams))
    pairs = [_hash("p", pair) for pair in _pairs(words, weights)]
    hashes.extend(pairs)
    weight_list.extend([weights.pair] * len(pairs))
    hash_array = np.array(hashes, dtype=np.uint64)  # (F,)
    slots = (hash_array % np.uint64(key_dim)).astype(np.int64)  # (F,)
    signed = np.where((hash_array >> np.uint64(63)) == 1, 1.0, -1.0) * np.array(weight_list)  # (F,)
    if semantic_buckets:
        # Buckets always add with a positive sign.
        bucket_hashes = np.array([_hash("s", str(bucket)) for bucket in semantic_buckets], dtype=np.uint64)
        slots = np.concatenate([slots, (bucket_hashes % np.uint64(key_dim)).astype(np.int64)])
        signed = np.concatenate([signed, np.full(len(bucket_hashes), weights.semantic / np.sqrt(len(bucket_hashes)))])
    if len(slots) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)

    # Sum the signed weights per slot in order of appearance (np.bincount
    # adds them in index order, like a running sum per slot).
    index, inverse = np.unique(slots, return_inverse=True)  # (n,), (F,)
    value = np.bincount(inverse, weights=signed, minlength=len(index))  # (n,)
    keep = value != 0.0
    return index[keep], value[keep]
