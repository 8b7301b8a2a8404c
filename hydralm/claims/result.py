"""Structured outcome of one claim check."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("analytic", "measured")


@dataclass
class ClaimResult:
    """Outcome of one check: the gate it applied and what it measured.

    `kind` is "analytic" when the numbers come from cost formulas and
    "measured" when they come from running a model on this machine.
    `claim` is the headline claim (1 to 6) the check belongs to; each claim
    has a reference gate and at least one measured twin.
    """

    name: str
    title: str
    passed: bool
    kind: str
    thresholds: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    seconds: float = 0.0
    claim: int = 0
    summary: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"invalid kind {self.kind!r}; expected one of {KINDS}")

    @property
    def status(self) -> str:
        """PASS or FAIL."""
        return "PASS" if self.passed else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (non-finite floats become strings)."""
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClaimResult":
        """Build a result from `to_dict()` output."""
        return cls(**data)


def _jsonable(value: Any) -> Any:
    """Convert nested values to types `json.dumps` accepts without loss of meaning."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        # JSON has no NaN or infinity; keep them readable instead of invalid.
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "item"):  # numpy or torch scalar
        return _jsonable(value.item())
    return str(value)


def results_to_json(results: list[ClaimResult], **meta: Any) -> str:
    """Serialise results plus run metadata (budget, machine, date) as JSON text."""
    payload = {"meta": _jsonable(meta), "results": [r.to_dict() for r in results]}
    return json.dumps(payload, indent=2, allow_nan=False)
