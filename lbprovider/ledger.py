"""The ledger: every record the engine keeps, under a typed key, in one state store.

Four kinds of record, each with its key and its codec (SPEC §7):

=============  ===============================  =====================================
kind           key                              record
=============  ===============================  =====================================
``lb``         ``lb:<profile>``                 :class:`~lbprovider.policies.LBRecord`
``breaker``    ``breaker:<member>``             :class:`~lbprovider.breaker.BreakerRecord`
``tpm``        ``tpm:<member>``                 :class:`~lbprovider.window.Buckets`
``metrics``    ``metrics:<profile>:<member>``   :class:`~lbprovider.stats.MemberMetrics`
=============  ===============================  =====================================

The one write is :meth:`Ledger.apply`: pure steps over records, applied atomically by
the store (all or nothing, no other writer in between), returning each record before
and after — so counters are exact and "one half-open probe" holds across processes
and machines.  :meth:`Ledger.decide` is the same for one step that also returns a
decision (a request's ticket and start index).  A store only has to apply raw JSON
updaters atomically (:class:`~lbprovider.state.StateStore`); encoding, decoding and key
strings live here and nowhere else.  The operations the CLI and hosts need — the stats
report, resetting counters, bench and unbench — are functions of this module too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from lbprovider import breaker as brk
from lbprovider import stats, window
from lbprovider.affinity import AffinityRecord
from lbprovider.config import Outline
from lbprovider.headroom import RateLimit
from lbprovider.policies import LBRecord
from lbprovider.state import StateStore, Updater

__all__ = [
    "AFFINITY",
    "BREAKER",
    "HEADROOM",
    "LB",
    "METRICS",
    "TPM",
    "Change",
    "Decided",
    "Key",
    "Kind",
    "Ledger",
    "affinity_key",
    "bench",
    "breaker_key",
    "headroom_key",
    "lb_key",
    "metrics_key",
    "recorded_profiles",
    "report",
    "reset_counters",
    "tpm_key",
    "unbench",
]

R = TypeVar("R")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Kind(Generic[R]):
    """A kind of record: its key prefix, its codec, and how long a store may keep it."""

    name: str
    decode: Callable[[Any], R]
    encode: Callable[[R], Any]
    ttl_s: float | None = None  # a store that can expire keys drops the record after this


LB: Kind[LBRecord] = Kind("lb", LBRecord.from_dict, LBRecord.to_dict)
BREAKER: Kind[brk.BreakerRecord] = Kind(
    "breaker", brk.BreakerRecord.from_dict, brk.BreakerRecord.to_dict
)
TPM: Kind[window.Buckets] = Kind(
    "tpm", window.Buckets.from_dict, window.Buckets.to_dict, ttl_s=window.WINDOW_MINUTES * 60 + 60
)
METRICS: Kind[stats.MemberMetrics] = Kind(
    "metrics", stats.MemberMetrics.from_dict, stats.MemberMetrics.to_dict
)
# A conversation's member (SPEC §3.5): kept at most a day, the longest affinity_ttl_ms
# (the load balancer's own time to live is applied when the record is read).
AFFINITY: Kind[AffinityRecord] = Kind(
    "affinity", AffinityRecord.from_dict, AffinityRecord.to_dict, ttl_s=86_400
)
# A member's rate-limit headroom as it last said (SPEC §3.6); lapses at its resets.
HEADROOM: Kind[RateLimit | None] = Kind(
    "headroom",
    lambda raw: RateLimit.from_dict(raw) if raw else None,
    lambda rec: rec.to_dict() if rec is not None else None,
    ttl_s=86_400,
)
KINDS = {k.name: k for k in (LB, BREAKER, TPM, METRICS, AFFINITY, HEADROOM)}


@dataclass(frozen=True, slots=True)
class Key(Generic[R]):
    """A record's key: its kind and its name (``coding``, ``primary``, ``coding:primary``)."""

    kind: Kind[R]
    name: str

    def __str__(self) -> str:
        return f"{self.kind.name}:{self.name}"

    @staticmethod
    def parse(text: str) -> Key[Any]:
        """The key a stored key string names."""
        kind, _, name = text.partition(":")
        return Key(KINDS[kind], name)


def lb_key(profile: str) -> Key[LBRecord]:
    """A load balancer's routing record (indices, counters)."""
    return Key(LB, profile)


def breaker_key(member: str) -> Key[brk.BreakerRecord]:
    """A member's breaker (shared by every load balancer)."""
    return Key(BREAKER, member)


def tpm_key(member: str) -> Key[window.Buckets]:
    """A member's TPM buckets (shared by every load balancer)."""
    return Key(TPM, member)


def affinity_key(profile: str, conversation: str) -> Key[AffinityRecord]:
    """A conversation's member under one load balancer (``conversation``: a SHA-256)."""
    return Key(AFFINITY, f"{profile}:{conversation}")


def headroom_key(member: str) -> Key[RateLimit | None]:
    """A member's last rate-limit headers (shared by every load balancer)."""
    return Key(HEADROOM, member)


def metrics_key(profile: str, member: str) -> Key[stats.MemberMetrics]:
    """A member's metrics under one load balancer."""
    return Key(METRICS, f"{profile}:{member}")


@dataclass(frozen=True, slots=True)
class Change(Generic[R]):
    """A record before and after one atomic step."""

    before: R
    after: R


@dataclass(frozen=True, slots=True)
class Decided(Generic[T, R]):
    """What :meth:`Ledger.decide` answers: the decision, the record's change, and the
    records read in the same trip."""

    decision: T
    change: Change[R]
    known: dict[Key[Any], Any]


class _Step:
    """A raw updater applying a typed step; remembers the last before/after (a store may
    run an updater again after a conflict, so only the last run counts)."""

    __slots__ = ("change", "key", "step")

    def __init__(self, key: Key[Any], step: Callable[[Any], Any]) -> None:
        self.key = key
        self.step = step
        self.change: Change[Any] | None = None

    def __call__(self, raw: Any) -> Any:
        before = self.key.kind.decode(raw)
        after = self.step(before)
        self.change = Change(before, after)
        return None if after is None else self.key.kind.encode(after)


Steps = Mapping[Key[Any], Callable[[Any], Any]]


class Ledger:
    """Typed, atomic access to a :class:`~lbprovider.state.StateStore`.

    A step returning None forgets the record.  The async forms serve requests; the
    synchronous ones serve the CLI (``stats``, ``bench``) and tests.
    """

    def __init__(self, store: StateStore) -> None:
        self.store = store

    @staticmethod
    def _raw(steps: Steps) -> tuple[dict[str, Updater], list[_Step], dict[str, float]]:
        wrapped = [_Step(key, step) for key, step in steps.items()]
        ttl = {str(w.key): w.key.kind.ttl_s for w in wrapped if w.key.kind.ttl_s}
        return {str(w.key): w for w in wrapped}, wrapped, ttl

    @staticmethod
    def _changes(wrapped: list[_Step]) -> dict[Key[Any], Change[Any]]:
        return {w.key: w.change for w in wrapped if w.change is not None}

    # -- async: the request path ---------------------------------------------------------

    async def aread(self, keys: Iterable[Key[Any]]) -> dict[Key[Any], Any]:
        """The records under ``keys`` (a missing one reads as its kind's empty record)."""
        keys = list(keys)
        raw = await self.store.aget_many([str(k) for k in keys])
        return {k: k.kind.decode(raw.get(str(k))) for k in keys}

    async def aapply(self, steps: Steps) -> dict[Key[Any], Change[Any]]:
        """Apply ``steps`` in one atomic update; each record before and after."""
        updates, wrapped, ttl = self._raw(steps)
        await self.store.aupdate_many(updates, ttl_s=ttl)
        return self._changes(wrapped)

    async def decide(
        self, key: Key[R], step: Callable[[R], tuple[T, R]], *, read: Iterable[Key[Any]] = ()
    ) -> Decided[T, R]:
        """Apply one step that also returns a decision, atomically.  ``step`` answers
        ``(decision, new record)`` — the order of every decision function here
        (:func:`~lbprovider.policies.begin`, :func:`~lbprovider.breaker.admit`).  The
        result holds the decision, the record before and after, and the records under
        ``read`` as they were then (fetched in the same trip)."""
        decided: list[T] = []

        def run(record: R) -> R:
            decision, new = step(record)
            decided[:] = [decision]
            return new

        read = [k for k in read if k != key]
        updates, wrapped, ttl = self._raw({key: run})
        raw = await self.store.aupdate_many(updates, ttl_s=ttl, read=[str(k) for k in read])
        change = wrapped[0].change
        assert change is not None  # the store ran the step
        known = {k: k.kind.decode(raw.get(str(k))) for k in read}
        return Decided(decided[-1], change, known)

    def post(self, steps: Steps) -> None:
        """Apply ``steps`` soon, without waiting (counters: write-behind, in order)."""
        updates, _, ttl = self._raw(steps)
        self.store.post_many(updates, ttl_s=ttl)

    # -- sync: the CLI -----------------------------------------------------------------------

    def read(self, keys: Iterable[Key[Any]]) -> dict[Key[Any], Any]:
        """:meth:`aread`, blocking."""
        keys = list(keys)
        raw = self.store.get_many([str(k) for k in keys])
        return {k: k.kind.decode(raw.get(str(k))) for k in keys}

    def apply(self, steps: Steps) -> dict[Key[Any], Change[Any]]:
        """:meth:`aapply`, blocking."""
        updates, wrapped, ttl = self._raw(steps)
        self.store.update_many(updates, ttl_s=ttl)
        return self._changes(wrapped)

    def scan(self, kind: Kind[R], prefix: str = "") -> dict[Key[R], R]:
        """Every record of ``kind`` whose name starts with ``prefix``."""
        raw = self.store.scan(f"{kind.name}:{prefix}")
        return {Key(kind, k.partition(":")[2]): kind.decode(v) for k, v in raw.items()}


# -- operations ---------------------------------------------------------------------------------


def report(lb: Outline, ledger: Ledger, now: float) -> dict[str, Any]:
    """The stats report of one load balancer (SPEC §6), from the ledger (no litellm)."""
    names = lb.member_names
    keys: list[Key[Any]] = [lb_key(lb.name)]
    keys += [metrics_key(lb.name, n) for n in names]
    keys += [breaker_key(n) for n in names] + [tpm_key(n) for n in names]
    keys += [headroom_key(n) for n in names]
    records = ledger.read(keys)
    return stats.build_stats(
        profile=lb.name,
        policy=lb.policy.value,
        members=names,
        models=dict(lb.models),
        lb=records[lb_key(lb.name)],
        metrics={n: records[metrics_key(lb.name, n)] for n in names},
        breakers={n: records[breaker_key(n)] for n in names},
        tpm={n: records[tpm_key(n)] for n in names},
        rate_limits={n: records[headroom_key(n)] for n in names},
        now=now,
        window_s=lb.failure_window_ms / 1000,
    )


def reset_counters(ledger: Ledger, profile: str) -> None:
    """Clear one load balancer's counters; breakers, TPM and routing indices stay."""
    steps: dict[Key[Any], Callable[[Any], Any]] = {lb_key(profile): LBRecord.without_counters}
    steps.update({key: (lambda _: None) for key in ledger.scan(METRICS, f"{profile}:")})
    ledger.apply(steps)


def recorded_profiles(ledger: Ledger) -> list[str]:
    """The load balancers with recorded state, by name."""
    return sorted(key.name for key in ledger.scan(LB))


def bench(ledger: Ledger, member: str, duration_s: float, now: float) -> None:
    """Open ``member``'s breaker by hand (every load balancer, every process sees it)."""
    ledger.apply({breaker_key(member): lambda r: brk.bench(r, now, duration_s)})


def unbench(ledger: Ledger, member: str) -> None:
    """Close ``member``'s breaker by hand."""
    ledger.apply({breaker_key(member): brk.unbench})
