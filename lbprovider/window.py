"""The tokens-per-minute window (SPEC §5): per-minute buckets kept 5 minutes.

:class:`Buckets` is a ``{minute: tokens}`` record keyed by ``floor(epoch_seconds / 60)``
and stored in the state store (``tpm:<member>``), so every process adds to the same
window.
(cachetools' TTLCache would expire entries for us, but it lives in one process's
memory; the window has to persist and be shared, so it is a plain mapping pruned
on every write.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "WINDOW_MINUTES",
    "Buckets",
    "add_tokens",
    "current_tpm",
    "estimate_tokens",
    "minute_of",
    "should_skip",
]

WINDOW_MINUTES = 5


def minute_of(epoch_seconds: float) -> int:
    """The bucket key of a moment."""
    return math.floor(epoch_seconds / 60)


@dataclass(frozen=True, slots=True)
class Buckets:
    """One member's tokens per minute, the last :data:`WINDOW_MINUTES` minutes."""

    minutes: Mapping[int, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> Buckets:
        """From the stored ``{"minute": tokens}`` object (None: empty)."""
        return cls({int(k): int(v) for k, v in (raw or {}).items()})

    def to_dict(self) -> dict[str, int]:
        """The stored form: minutes as strings (JSON object keys)."""
        return {str(m): t for m, t in sorted(self.minutes.items())}


def _buckets(b: Buckets | Mapping[str, Any] | None) -> Mapping[int, int]:
    return b.minutes if isinstance(b, Buckets) else Buckets.from_dict(b).minutes


def add_tokens(b: Buckets | Mapping[str, Any] | None, now: float, tokens: int) -> Buckets:
    """Add ``tokens`` to the current minute and drop buckets older than the window."""
    current = minute_of(now)
    kept = {m: t for m, t in _buckets(b).items() if m > current - WINDOW_MINUTES}
    kept[current] = kept.get(current, 0) + max(0, tokens)
    return Buckets(kept)


def current_tpm(b: Buckets | Mapping[str, Any] | None, now: float) -> float:
    """``sum(last 5 buckets) / (current_minute - oldest_non_empty_minute + 1)``; 0 if empty."""
    current = minute_of(now)
    recent = {
        m: t for m, t in _buckets(b).items() if current - WINDOW_MINUTES < m <= current and t > 0
    }
    if not recent:
        return 0.0
    return sum(recent.values()) / (current - min(recent) + 1)


def should_skip(tpm: float, threshold: int | None) -> bool:
    """``tpm_threshold > 0 and 0 < TPM < tpm_threshold`` (no history: never skipped)."""
    return bool(threshold) and threshold is not None and threshold > 0 and 0 < tpm < threshold


def estimate_tokens(messages: Iterable[Mapping[str, Any]], completion: str) -> int:
    """About 4 characters a token, for backends that report no usage."""
    chars = len(completion)
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    return max(1, math.ceil(chars / 4))
