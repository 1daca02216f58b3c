"""One event loop's link to Redis: held connections, group commit, coalesced reads.

Why one per loop (:class:`~lbprovider.loops.PerLoop`): a request must never hop to
another thread, and a connection taken from redis-py's pool per call pays a health check
on every checkout; so each loop has its own client and holds one connection per role
(updates, reads, the rescue's check).  Commands are packed and sent on the held
connection; a failure disconnects it, so a half-read reply never meets the next command.

Why one transaction at a time (:class:`Batch`, group commit): updates issued while one is
in flight go together in the next, so a link never conflicts with itself and keeps what
it last saw current (one round trip per transaction, not two); at concurrency 32 a burst
costs a few transactions, not 32 that conflict.  Posts (write-behind) wait up to
:data:`LINGER_S` for company and ride in the next awaited update when one comes first.
Reads issued while one ``MGET`` is in flight share the next one.

What a link needs of its store (the health guard around each trip, the rescue of posts a
loop could not finish) is the :class:`LinkOwner` protocol; the script and its arguments
are :mod:`~lbprovider.state.redis.cas`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Protocol

import redis
import redis.asyncio as aredis

from lbprovider.state import Updater
from lbprovider.state.health import Unavailable
from lbprovider.state.redis.cas import (
    CAS_SCRIPT,
    CAS_SHA,
    PREFIX,
    applied,
    cas_args,
    cas_keys,
    conflict_values,
    decode,
    run_updaters,
)

__all__ = ["CLOSE_S", "LINGER_S", "TIMEOUT_S", "Batch", "Link", "LinkOwner", "Op", "settle"]

TIMEOUT_S = 2.0  # connecting, and waiting for a reply
CLOSE_S = 10.0
# Posts wait this long for company: one transaction then carries the counters of every
# request that ended meanwhile.  Breaker changes never wait (they are not posted).
LINGER_S = 0.005
_RETRIES = 100  # an update run again after a conflict, at most

Waiter = asyncio.Future[dict[str, Any]] | concurrent.futures.Future[dict[str, Any]]
Outcome = tuple[Any, BaseException | None]


class Op:
    """One update on its way to Redis; ``waiter`` gets its new values.  ``sent`` turns
    true just before the update that may apply it is sent: from then on a read cannot tell
    whether Redis has it, and waits for it instead of adding it itself.  ``tx`` numbers
    that transaction, ``via`` is the link that sent it."""

    __slots__ = ("reads", "sent", "ttl_s", "tx", "updates", "via", "waiter")

    def __init__(
        self,
        updates: Mapping[str, Updater],
        ttl_s: Mapping[str, float],
        waiter: Waiter,
        reads: tuple[str, ...] = (),
    ) -> None:
        self.updates = updates
        self.ttl_s = ttl_s
        self.waiter = waiter
        self.reads = reads  # keys only read, in the same round trip
        self.sent = False
        self.tx = 0
        self.via: Link | None = None

    @property
    def posted(self) -> bool:
        """A post (nobody awaits it on an event loop), not an awaited update."""
        return isinstance(self.waiter, concurrent.futures.Future)


def settle(waiter: Waiter, value: dict[str, Any] | None, error: BaseException | None) -> None:
    """Give ``waiter`` its answer, unless its caller gave up waiting."""
    if waiter.done():
        return
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(value or {})


class LinkOwner(Protocol):
    """What a link needs of its store."""

    @property
    def url(self) -> str: ...

    @property
    def tx_numbers(self) -> Iterator[int]:
        """Numbers transactions in the order sent, across the store's links."""
        ...

    async def commit(self, link: Link, ops: list[Op], marker: str | None = None) -> None:
        """Run :meth:`Link.transaction` through the health guard and settle ``ops``."""

    async def fetch(self, link: Link, keys: list[str]) -> dict[str, Any]:
        """Run :meth:`Link.mget` through the health guard, decoded."""
        ...

    def rescue(self, ops: list[Op], marker: str | None) -> None:
        """Finish posts this link's loop could not (any thread)."""


class Batch:
    """Ops waiting for one transaction: an awaited update starts it at once, a post
    after a linger; whatever arrives while one runs goes in the next (group commit).
    One transaction at a time per link, so a link never conflicts with itself."""

    def __init__(self, run: Callable[[list[Op]], Awaitable[None]], linger_s: float) -> None:
        self.run = run
        self.linger_s = linger_s
        self.lock = threading.Lock()  # posts are queued from other threads too
        self.ops: list[Op] = []
        self.inflight: list[Op] = []
        self.marker: str | None = None  # the transaction in flight sets this marker key
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def add(self, op: Op) -> bool:
        """Queue ``op`` (any thread); True when it is the first of a batch."""
        with self.lock:
            self.ops.append(op)
            return len(self.ops) == 1

    def arm(self) -> None:
        """Start the batch after the linger (on the link's loop)."""
        if self.task is None and self.timer is None and self.ops:
            if self.linger_s:
                self.timer = asyncio.get_running_loop().call_later(self.linger_s, self.kick)
            else:
                self.kick()

    def kick(self) -> None:
        """Start the batch now, unless one is running (on the link's loop)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is None and self.ops:
            self.task = asyncio.get_running_loop().create_task(self._drain())

    def take(self) -> list[Op]:
        """Everything queued and not yet sent (any thread), out of this batch."""
        with self.lock:
            ops, self.ops = self.ops, []
        return ops

    async def _drain(self) -> None:
        try:
            while ops := self.take():
                self.inflight = ops
                await self.run(ops)
                self.inflight = []
        finally:
            self.inflight, self.task = [], None


class Link:
    """One event loop's connections to Redis and its two queues: updates (awaited and
    posted, in one transaction at a time) and reads (one ``MGET`` at a time) — whatever
    is issued while one is in flight goes in the next.  Its connections are held, not
    taken from the pool per call: redis-py checks a pooled connection's health on every
    checkout."""

    def __init__(self, store: LinkOwner) -> None:
        self.store = store
        self.loop = asyncio.get_running_loop()
        # No socket_timeout (redis-py's default is 5 s): one timeout covers each whole
        # operation instead — a timer per socket read costs more than the read.
        self.client = aredis.Redis.from_url(
            store.url, socket_connect_timeout=TIMEOUT_S, socket_timeout=None
        )
        self.batch = Batch(self._commit, LINGER_S)
        self.reads: list[tuple[list[str], asyncio.Future[dict[str, Any]]]] = []
        self.reading: asyncio.Task[None] | None = None
        self._conns: dict[str, Any] = {}  # by role: a redis-py Connection
        # The stored form of each key as this link last saw it (None: absent).  Only a
        # guess: the server checks it before any write.
        self.seen: dict[str, bytes | None] = {}
        # ... and decoded: values are never changed in place (updaters are pure, as
        # MemoryStore also relies on), so a value written is not decoded again.
        self.values: dict[str, Any] = {}

    # -- connections --------------------------------------------------------------------------

    async def _conn(self, role: str) -> Any:
        conn = self._conns.get(role)
        if conn is None:
            pool = self.client.connection_pool
            conn = self._conns[role] = await pool.get_connection()  # type: ignore[no-untyped-call]
        return conn

    @staticmethod
    async def _roundtrip(conn: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` pipelined, return their replies.  A failure leaves the
        connection closed (a half-read reply must never meet the next command); its
        next use reconnects."""
        try:
            await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            return [await conn.read_response() for _ in commands]
        except BaseException:
            await conn.disconnect()
            raise

    # -- updates ------------------------------------------------------------------------------

    async def _commit(self, ops: list[Op]) -> None:
        marker = self.batch.marker = secrets.token_hex(8) if any(op.posted for op in ops) else None
        try:
            await self.store.commit(self, ops, marker=marker)
        except asyncio.CancelledError:
            # The loop is ending: nobody is left to await its updates; its posts are
            # finished by the store's own loop (which, if the update went out, first asks
            # Redis whether it applied them).
            queued = self.batch.take()
            for op in (*ops, *queued):
                if not op.posted:
                    settle(op.waiter, None, Unavailable("the event loop ended"))
            self.store.rescue(ops, marker)
            self.store.rescue(queued, None)
            raise

    async def transaction(self, ops: list[Op], marker: str | None = None) -> list[Outcome]:
        """Apply ``ops`` to the values this link last saw, and send the result with those
        values to the compare-and-set script, which writes only if every key still holds
        them; if one does not, it answers the current values and the ops run again on
        them.  One round trip when nothing changed since this link's last look (its own
        transactions keep it current), two after another writer's change.  ``marker``: a
        key also set, so that whether the transaction applied can be asked later."""
        names = list(dict.fromkeys(k for op in ops for k in op.updates))
        extra = list(dict.fromkeys(k for op in ops for k in op.reads if k not in names))
        checked = [*names, *extra]
        keys = cas_keys(checked, marker)
        ttl = {k: t for op in ops for k, t in op.ttl_s.items()}
        conn = await self._conn("tx")
        tx = next(self.store.tx_numbers)
        seen = self.seen
        for _ in range(_RETRIES):
            found = {k: self._value(k) for k in checked if seen.get(k) is not None}
            attempt = run_updaters(ops, names, found)
            args = cas_args(checked, seen, attempt.written, ttl, marker)
            for op in ops:
                op.sent, op.tx, op.via = True, tx, self
            reply = await self._cas(conn, keys, args)
            if applied(reply):
                seen.update(attempt.written)
                self.values.update((k, attempt.current.get(k)) for k in attempt.written)
                return attempt.results
            # Another writer changed a key since this link last saw it: run again on
            # the values it has now.
            seen.update(conflict_values(checked, reply))
            for k in checked:
                self.values.pop(k, None)
        raise redis.ConnectionError("too many conflicting writers")

    def _value(self, key: str) -> Any:
        if key not in self.values:
            self.values[key] = decode(self.seen[key])
        return self.values[key]

    async def _cas(self, conn: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            (reply,) = await self._roundtrip(conn, [("EVALSHA", CAS_SHA, len(keys), *keys, *args)])
        except redis.exceptions.NoScriptError:  # a new or restarted server
            (reply,) = await self._roundtrip(conn, [("EVAL", CAS_SCRIPT, len(keys), *keys, *args)])
        return reply

    # -- reads --------------------------------------------------------------------------------

    async def read(self, keys: list[str]) -> dict[str, Any]:
        """The stored values of ``keys``, in the next ``MGET`` of this loop."""
        future: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.reads.append((keys, future))
        if self.reading is None:
            self.reading = self.loop.create_task(self._read_all())
        return await future

    async def _read_all(self) -> None:
        try:
            while self.reads:
                batch, self.reads = self.reads, []
                keys = list(dict.fromkeys(k for ks, _ in batch for k in ks))
                try:
                    values = await self.store.fetch(self, keys)
                except Exception as exc:  # a bug, not the server's health: tell the readers
                    for _, future in batch:
                        settle(future, None, exc)
                    continue
                for ks, future in batch:
                    settle(future, {k: values[k] for k in ks if k in values}, None)
        except BaseException:  # the loop is ending: nobody is left to wait
            for _, future in self.reads:
                future.cancel()
            self.reads = []
            raise
        finally:
            self.reading = None

    async def mget(self, keys: list[str]) -> list[Any]:
        """One ``MGET`` on the read connection."""
        conn = await self._conn("read")
        (values,) = await self._roundtrip(conn, [("MGET", *(PREFIX + k for k in keys))])
        return list(values)

    async def exists(self, key: str) -> bool:
        """Does ``key`` (a full name) exist?  On a connection of its own, so it never
        waits behind this link's transaction or reads."""
        conn = await self._conn("check")
        (found,) = await self._roundtrip(conn, [("EXISTS", key)])
        return bool(found)

    # -- the end ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Write what is queued, then close the connections."""
        self.batch.kick()
        if self.batch.task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self.batch.task), CLOSE_S)
        self.store.rescue(self.batch.take(), None)  # if writing them failed or timed out
        for conn in self._conns.values():
            await self.client.connection_pool.release(conn)
        self._conns.clear()
        await self.client.aclose()
