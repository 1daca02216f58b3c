"""The compare-and-set script, and the pure logic on either side of it.

Why a script: an update must be atomic across processes and machines, yet its rules
(breaker transitions, the sticky "newest wins", TPM pruning) live in Python, once.  So
the updaters run here, on the values this process last saw, and one small generic Lua
script checks on the server that every key read or written still holds those values
before it writes the results; if one does not, it answers the current values and the
updaters run again on them.  The script knows nothing of breakers or counters: a rule
written twice, in Python and Lua, would drift.

This module is everything about that exchange that needs no connection: the script and
its SHA, the key names, the JSON codec, running a batch's updaters on a set of values,
building the script's arguments, and reading its answer.  The link
(:mod:`~lbprovider.state.redis.link`) sends what is built here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from lbprovider.state import Updater

__all__ = [
    "CAS_SCRIPT",
    "CAS_SHA",
    "MARKER",
    "MARKER_TTL_MS",
    "PREFIX",
    "Attempt",
    "Change",
    "applied",
    "cas_args",
    "cas_keys",
    "conflict_values",
    "decode",
    "encode",
    "run_updaters",
]

PREFIX = "lbprovider:"
# A post transaction also sets lbprovider:tx:<random>, briefly: when its loop ends with
# its update sent and no answer read, the store's own loop asks whether it applied
# (:mod:`~lbprovider.state.redis.rescue`).
MARKER = PREFIX + "tx:"
MARKER_TTL_MS = 60_000

# Compare and set: write only if every key still holds the value the caller computed
# from ("" = absent); else answer the current values.  KEYS: the keys checked (and a
# marker key, expected absent); ARGV: their expected values, then (index, value, ttl ms)
# for each key written ("" value: delete, "" ttl: none).  The rules stay in Python: the
# script knows nothing of breakers or counters.
CAS_SCRIPT = """
local current = redis.call('MGET', unpack(KEYS))
for i = 1, #KEYS do
  if (current[i] or '') ~= ARGV[i] then
    return current
  end
end
for j = #KEYS + 1, #ARGV, 3 do
  local key, value, ttl = KEYS[tonumber(ARGV[j])], ARGV[j + 1], ARGV[j + 2]
  if value == '' then
    redis.call('DEL', key)
  elseif ttl == '' then
    redis.call('SET', key, value)
  else
    redis.call('SET', key, value, 'PX', ttl)
  end
end
return 1
"""
CAS_SHA = hashlib.sha1(CAS_SCRIPT.encode()).hexdigest()


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def decode(raw: bytes | str | None) -> Any:
    """A stored value, decoded (None: absent)."""
    return None if raw is None else json.loads(raw)


def encode(value: Any) -> bytes | None:
    """A value in its stored form (None: delete the key)."""
    return None if value is None else _dump(value).encode()


def _ttl_ms(ttl_s: float | None) -> int | bytes:
    return b"" if ttl_s is None else int(ttl_s * 1000)


class Change(Protocol):
    """What the script's caller needs of one queued update: its pure updaters, and the
    keys it only reads in the same round trip."""

    @property
    def updates(self) -> Mapping[str, Updater]: ...

    @property
    def reads(self) -> tuple[str, ...]: ...


Outcome = tuple[Any, BaseException | None]


class Attempt:
    """One run of a batch's updaters on the values last seen: each change's answer (its
    new values and read keys, or its updater's exception), the values after them all,
    and what to write (stored form, None to delete)."""

    __slots__ = ("current", "results", "written")

    def __init__(
        self, results: list[Outcome], current: dict[str, Any], written: dict[str, bytes | None]
    ) -> None:
        self.results = results
        self.current = current
        self.written = written


def _apply(changes: Sequence[Change], current: dict[str, Any]) -> list[Outcome]:
    """Run each change's updaters in order on ``current`` (changed in place); a change
    whose updater raises changes nothing and gets the exception."""
    out: list[Outcome] = []
    for change in changes:
        try:
            new = {k: fn(current.get(k)) for k, fn in change.updates.items()}
        except Exception as exc:  # an updater's own bug: its caller's, nothing written
            out.append((None, exc))
            continue
        current.update(new)
        out.append((new, None))
    return out


def _with_reads(
    new: Any, reads: tuple[str, ...], current: dict[str, Any], found: dict[str, Any]
) -> Any:
    """A change's answer: its new values, and the values of the keys it only reads."""
    if new is None or not reads:
        return new
    out = dict(new)
    for k in reads:
        value = current.get(k, found.get(k))
        if k not in out and value is not None:
            out[k] = value
    return out


def run_updaters(changes: Sequence[Change], names: Iterable[str], found: dict[str, Any]) -> Attempt:
    """Run ``changes`` in order on ``found`` (the decoded values last seen of every key
    checked, absent ones left out); ``names`` are the keys written to."""
    names = list(names)
    current = {k: found[k] for k in names if k in found}
    results = [
        (_with_reads(value, change.reads, current, found), error)
        for change, (value, error) in zip(changes, _apply(changes, current), strict=True)
    ]
    touched = {
        k
        for change, (_, error) in zip(changes, results, strict=True)
        if error is None
        for k in change.updates
    }
    written = {k: encode(current.get(k)) for k in names if k in touched}
    return Attempt(results, current, written)


def cas_keys(checked: Sequence[str], marker: str | None) -> list[str]:
    """The script's KEYS: every key checked, then the marker key if there is one."""
    keys = [PREFIX + k for k in checked]
    if marker is not None:
        keys.append(MARKER + marker)
    return keys


def cas_args(
    checked: Sequence[str],
    seen: Mapping[str, bytes | None],
    written: Mapping[str, bytes | None],
    ttl_s: Mapping[str, float],
    marker: str | None,
) -> list[Any]:
    """The script's ARGV: what each checked key held when last seen (the marker:
    absent), then (index, value, ttl) for each key written — and the marker itself when
    anything is written."""
    args: list[Any] = [seen.get(k) or b"" for k in checked]
    if marker is not None:
        args.append(b"")
    for i, k in enumerate(checked):
        if k in written:
            args += [i + 1, written[k] or b"", _ttl_ms(ttl_s.get(k))]
    if marker is not None and written:
        args += [len(checked) + 1, b"1", MARKER_TTL_MS]
    return args


def applied(reply: Any) -> bool:
    """Did the script write (rather than answer current values)?"""
    return bool(reply == 1)


def conflict_values(checked: Sequence[str], reply: Sequence[Any]) -> dict[str, bytes | None]:
    """The current stored values the script answered, by checked key (the marker's, last,
    is left out)."""
    return dict(zip(checked, reply, strict=False))
