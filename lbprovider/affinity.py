"""Conversation affinity (SPEC §3.5): keep a conversation on the member whose prompt
cache already holds it.

Coding assistants resend the whole conversation every turn, and providers cache a
prompt's prefix per account for minutes; round-robin would scatter one conversation
over every member and miss that cache on each move.  So, under ``roundrobin``:

- a request's *conversation key* is the caller's explicit key (``affinity_key=``; the
  gateway's session headers and body fields), else a hash of the load balancer's name,
  the system prompt(s) and the first user message.  Only the SHA-256 of the key is kept:
  no prompt text reaches the state store;
- a request whose estimated prompt is at least ``affinity_min_tokens`` and whose key was
  served by member M within ``affinity_ttl_ms`` tries M first, if M is admitted — health
  always wins — and the rest in the usual order;
- a request with no explicit key and no earlier answer in its messages (a first turn, or
  a one-shot prompt sent again) still rotates; only later turns follow the conversation;
- whichever member serves becomes the key's member, and the time to live restarts.

:class:`Affinity` is one request's view (its key, whether it may follow it, the member
the record names); the record itself is an :class:`AffinityRecord` in the ledger.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lbprovider.config import LoadBalancerConfig, Policy
from lbprovider.window import estimate_tokens

__all__ = ["Affinity", "AffinityRecord", "conversation"]


@dataclass(frozen=True, slots=True)
class AffinityRecord:
    """Which member last served a conversation, and when (epoch seconds)."""

    member: str | None = None
    at: float = 0.0

    def to_dict(self) -> dict[str, Any] | None:
        """The stored form (None: nothing to keep)."""
        return None if self.member is None else {"member": self.member, "at": self.at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> AffinityRecord:
        """Inverse of :meth:`to_dict`."""
        if not d:
            return cls()
        return cls(member=d.get("member"), at=float(d.get("at", 0.0)))


@dataclass(frozen=True, slots=True)
class Affinity:
    """One request's conversation: ``key`` (the SHA-256 hex of the conversation key),
    ``follows``: whether this request may go to the key's member (an explicit key, or a
    later turn); ``explicit``: the caller named the conversation."""

    key: str
    follows: bool
    explicit: bool

    def member_index(
        self, record: AffinityRecord, config: LoadBalancerConfig, now: float
    ) -> int | None:
        """The index of the member the record names, if it may come first: known, not
        expired, still a member (None otherwise)."""
        ttl_s = config.settings.affinity_ttl_ms / 1000
        if record.member is None or now - record.at > ttl_s:
            return None
        names = config.member_names
        return names.index(record.member) if record.member in names else None


def _text(content: Any) -> Any:
    """A message's content without its markers: clients move ``cache_control`` to the
    newest message every turn, which must not change the conversation's key."""
    if isinstance(content, list):
        parts = [
            {k: v for k, v in part.items() if k != "cache_control"}
            if isinstance(part, Mapping)
            else part
            for part in content
        ]
        if all(isinstance(p, Mapping) and p.get("type") == "text" for p in parts):
            # Text blocks read the same as the string a client sends on another turn.
            return "".join(str(p.get("text", "")) for p in parts)
        return parts
    return content


def _system_and_first_user(messages: Sequence[Mapping[str, Any]]) -> list[Any]:
    system = [_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")]
    first_user = next((m.get("content") for m in messages if m.get("role") == "user"), None)
    return [system, _text(first_user)]


def conversation(
    config: LoadBalancerConfig,
    messages: Sequence[Mapping[str, Any]],
    explicit_key: str | None,
    prompt_tokens: int | None = None,
) -> Affinity | None:
    """The request's conversation, when affinity applies to it (``roundrobin``, a time to
    live, a prompt long enough to be cached); None otherwise.  ``prompt_tokens``: the
    request's estimate, when the caller has it already."""
    settings = config.settings
    if config.policy is not Policy.ROUNDROBIN or settings.affinity_ttl_ms <= 0:
        return None
    if prompt_tokens is None:
        prompt_tokens = estimate_tokens(messages, "")
    if prompt_tokens < settings.affinity_min_tokens:
        return None  # no provider caches it: nothing to keep together
    if explicit_key:
        material = json.dumps(["key", config.name, explicit_key])
    else:
        material = json.dumps(
            ["prompt", config.name, _system_and_first_user(messages)],
            sort_keys=True,
            ensure_ascii=False,
            default=str,
        )
    key = hashlib.sha256(material.encode()).hexdigest()
    later_turn = any(m.get("role") == "assistant" for m in messages)
    return Affinity(key, follows=bool(explicit_key) or later_turn, explicit=bool(explicit_key))
