"""The Redis state store (SPEC §7): ``redis://[:PASSWORD@]HOST:PORT/DB`` or ``rediss://``.

Every process on every machine pointing at the same Redis shares breakers (one
half-open probe across all of them), round-robin and sticky positions, TPM windows and
metrics, exactly.  Each atomic update is optimistic: apply the pure updaters here to the
values this process last saw, then send the result to a compare-and-set script that
writes only if every key — read or written — still holds what the updaters started
from; if one does not, the script answers the current values and the update runs again
on them.  So no count is lost and no decision is made on a stale record, and the rules
stay in Python (the script knows nothing of breakers or counters: a rule written twice,
in Python and Lua, would drift).

Cost per request is what this store is judged on, so:

* every operation runs on the caller's own event loop, through that loop's link (one
  client, connections held by role; :class:`~lbprovider.loops.PerLoop`): no thread hop
  on a request's path;
* a link runs one transaction at a time; whatever is issued while one is in flight goes
  in the next (group commit), so 32 concurrent requests cost a few transactions, not 32
  that conflict; reads issued together share one ``MGET``;
* posted (write-behind) updates wait up to 5 ms for company, and ride in the next awaited
  update's transaction when one comes first;
* an update is one round trip when this process was the last writer of its keys (its
  own transactions keep what it saw current), two after another writer's change;
* one timeout per operation rather than per socket read.

A process always reads its own writes: a read adds this process's posts not yet sent to
what Redis returned (updaters are pure), and waits for those being sent.  The
synchronous calls (CLI, ``stats``) and posts made outside an event loop run on the
store's own loop, in a daemon thread; posts left on a loop that ends (``asyncio.run``
cancels its tasks) are finished there, and ``close()`` — at exit too — waits for them.

Keys start with ``lbprovider:``; a kind with a time to live (TPM buckets) expires after
it.  Values are the ledger's JSON; nothing secret is stored.

The store's own health (:mod:`lbprovider.state.health`): when Redis cannot be reached,
the process warns once, serves from memory, and tries Redis again after the guard's
reset timeout: a request never fails because of the store.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import logging
import secrets
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis

from lbprovider.loops import PerLoop
from lbprovider.redaction import redact_url
from lbprovider.state import Updater
from lbprovider.state.health import StoreHealth, Unavailable
from lbprovider.state.memory import MemoryStore

__all__ = ["PREFIX", "RedisStore"]

logger = logging.getLogger("lbprovider")

PREFIX = "lbprovider:"
_RETRIES = 100  # an update run again after a conflict, at most
_TIMEOUT_S = 2.0  # connecting, and waiting for a reply
_CLOSE_S = 10.0
_SCAN_COUNT = 500
# Posts wait this long for company: one transaction then carries the counters of every
# request that ended meanwhile.  Breaker changes never wait (they are not posted).
_LINGER_S = 0.005
_READ_TRIES = 3
# A post transaction also sets lbprovider:tx:<random>, briefly: when its loop ends with
# its update sent and no answer read, the store's own loop asks whether it applied.
_MARKER = PREFIX + "tx:"
_MARKER_TTL_MS = 60_000
T = TypeVar("T")

# Compare and set: write only if every key still holds the value the caller computed
# from ("" = absent); else answer the current values.  KEYS: the keys checked (and a
# marker key, expected absent); ARGV: their expected values, then (index, value, ttl ms)
# for each key written ("" value: delete, "" ttl: none).  The rules stay in Python: the
# script knows nothing of breakers or counters.
_CAS = """
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
_CAS_SHA = hashlib.sha1(_CAS.encode()).hexdigest()

_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _load(raw: bytes | str | None) -> Any:
    return None if raw is None else json.loads(raw)


Waiter = asyncio.Future[dict[str, Any]] | concurrent.futures.Future[dict[str, Any]]


class _Op:
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
        self.via: _Link | None = None

    @property
    def posted(self) -> bool:
        """A post (nobody awaits it on an event loop), not an awaited update."""
        return isinstance(self.waiter, concurrent.futures.Future)


def _settle(waiter: Waiter, value: dict[str, Any] | None, error: BaseException | None) -> None:
    if waiter.done():  # its caller gave up waiting
        return
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(value or {})


def _apply(ops: list[_Op], current: dict[str, Any]) -> list[tuple[Any, BaseException | None]]:
    """Run each op's updaters in order on ``current`` (changed in place); an op whose
    updater raises changes nothing and gets the exception."""
    out: list[tuple[Any, BaseException | None]] = []
    for op in ops:
        try:
            new = {k: fn(current.get(k)) for k, fn in op.updates.items()}
        except Exception as exc:  # an updater's own bug: its caller's, nothing written
            out.append((None, exc))
            continue
        current.update(new)
        out.append((new, None))
    return out


def _with_reads(
    new: Any, reads: tuple[str, ...], current: dict[str, Any], found: dict[str, Any]
) -> Any:
    """An op's answer: its new values, and the values of the keys it only reads."""
    if new is None or not reads:
        return new
    out = dict(new)
    for k in reads:
        value = current.get(k, found.get(k))
        if k not in out and value is not None:
            out[k] = value
    return out


def _encode(value: Any) -> bytes | None:
    return None if value is None else _dump(value).encode()


def _ttl_ms(ttl_s: float | None) -> int | bytes:
    return b"" if ttl_s is None else int(ttl_s * 1000)


class _Batch:
    """Ops waiting for one transaction: an awaited update starts it at once, a post
    after a linger; whatever arrives while one runs goes in the next (group commit).
    One transaction at a time per link, so a link never conflicts with itself."""

    def __init__(self, run: Callable[[list[_Op]], Awaitable[None]], linger_s: float) -> None:
        self.run = run
        self.linger_s = linger_s
        self.lock = threading.Lock()  # posts are queued from other threads too
        self.ops: list[_Op] = []
        self.inflight: list[_Op] = []
        self.marker: str | None = None  # the transaction in flight sets this marker key
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def add(self, op: _Op) -> bool:
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

    def take(self) -> list[_Op]:
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


class _Link:
    """One event loop's connections to Redis and its two queues: updates (awaited and
    posted, in one transaction at a time) and reads (one ``MGET`` at a time) — whatever
    is issued while one is in flight goes in the next.  Its connections are held, not
    taken from the pool per call: redis-py checks a pooled connection's health on every
    checkout."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.loop = asyncio.get_running_loop()
        # No socket_timeout (redis-py's default is 5 s): one timeout covers each whole
        # operation instead — a timer per socket read costs more than the read.
        self.client = aredis.Redis.from_url(
            store.url, socket_connect_timeout=_TIMEOUT_S, socket_timeout=None
        )
        self.batch = _Batch(self._commit, _LINGER_S)
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

    async def _commit(self, ops: list[_Op]) -> None:
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
                    _settle(op.waiter, None, Unavailable("the event loop ended"))
            self.store.rescue(ops, marker)
            self.store.rescue(queued, None)
            raise

    async def transaction(
        self, ops: list[_Op], marker: str | None = None
    ) -> list[tuple[Any, BaseException | None]]:
        """Apply ``ops`` to the values this link last saw, and send the result with those
        values to :data:`_CAS`, which writes only if every key still holds them; if one
        does not, it answers the current values and the ops run again on them.  One round
        trip when nothing changed since this link's last look (its own transactions keep
        it current), two after another writer's change.  ``marker``: a key also set, so
        that whether the transaction applied can be asked later."""
        names = list(dict.fromkeys(k for op in ops for k in op.updates))
        extra = list(dict.fromkeys(k for op in ops for k in op.reads if k not in names))
        checked = [*names, *extra]
        keys = [PREFIX + k for k in checked]
        ttl = {k: t for op in ops for k, t in op.ttl_s.items()}
        if marker is not None:
            keys.append(_MARKER + marker)
        conn = await self._conn("tx")
        tx = next(self.store.tx_numbers)
        seen = self.seen
        for _ in range(_RETRIES):
            found = {k: self._value(k) for k in checked if seen.get(k) is not None}
            current = {k: found[k] for k in names if k in found}
            results = [
                (_with_reads(value, op.reads, current, found), error)
                for op, (value, error) in zip(ops, _apply(ops, current), strict=True)
            ]
            touched = {
                k
                for op, (_, error) in zip(ops, results, strict=True)
                if error is None
                for k in op.updates
            }
            written = {k: _encode(current.get(k)) for k in names if k in touched}
            args: list[Any] = [seen.get(k) or b"" for k in checked]
            if marker is not None:
                args.append(b"")
            for i, k in enumerate(checked):
                if k in written:
                    args += [i + 1, written[k] or b"", _ttl_ms(ttl.get(k))]
            if marker is not None and written:
                args += [len(keys), b"1", _MARKER_TTL_MS]
            for op in ops:
                op.sent, op.tx, op.via = True, tx, self
            reply = await self._cas(conn, keys, args)
            if reply == 1:
                seen.update(written)
                self.values.update((k, current.get(k)) for k in written)
                return results
            # Another writer changed a key since this link last saw it: run again on
            # the values it has now.
            seen.update(zip(checked, reply, strict=False))
            for k in checked:
                self.values.pop(k, None)
        raise redis.ConnectionError("too many conflicting writers")

    def _value(self, key: str) -> Any:
        if key not in self.values:
            self.values[key] = _load(self.seen[key])
        return self.values[key]

    async def _cas(self, conn: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            (reply,) = await self._roundtrip(conn, [("EVALSHA", _CAS_SHA, len(keys), *keys, *args)])
        except redis.exceptions.NoScriptError:  # a new or restarted server
            (reply,) = await self._roundtrip(conn, [("EVAL", _CAS, len(keys), *keys, *args)])
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
                        _settle(future, None, exc)
                    continue
                for ks, future in batch:
                    _settle(future, {k: values[k] for k in ks if k in values}, None)
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

    # -- the end ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Write what is queued, then close the connections."""
        self.batch.kick()
        if self.batch.task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self.batch.task), _CLOSE_S)
        self.store.rescue(self.batch.take(), None)  # if writing them failed or timed out
        for conn in self._conns.values():
            await self.client.connection_pool.release(conn)
        self._conns.clear()
        await self.client.aclose()


class RedisStore:
    """A :class:`~lbprovider.state.StateStore` in Redis, shared by processes and machines."""

    def __init__(self, url: str, *, reset_timeout_s: float = 30.0, fail_max: int = 3) -> None:
        self.url = url
        self.shown_url = redact_url(url)
        self._fallback = MemoryStore()
        self._health = StoreHealth(
            lost=f"state store {self.shown_url} is unreachable (%s); keeping state in memory "
            "and trying again every %g s",
            back=f"state store {self.shown_url} is reachable again",
            failures=_UNREACHABLE,
            fail_max=fail_max,
            reset_timeout_s=reset_timeout_s,
        )
        self._links: PerLoop[_Link] = PerLoop(
            lambda: _Link(self), lambda link: link.aclose(), alive=lambda link: True
        )
        # The store's own loop, in a daemon thread: the synchronous calls, posts made
        # outside any event loop, and posts rescued from a loop that ended.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own: _Link | None = None
        self._start_lock = threading.Lock()
        # Posts not yet settled, in the order issued: reads add them, flush waits for
        # them; and the links holding some.
        self._posts: dict[int, tuple[_Op, _Link]] = {}
        self._posts_lock = threading.Lock()
        self._seq = itertools.count()
        self.tx_numbers = itertools.count(1)  # transactions, in the order sent

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and state is kept in memory."""
        return self._health.degraded

    # -- loops and links ----------------------------------------------------------------------

    def _own_link(self) -> _Link:
        if self._own is None:
            with self._start_lock:
                if self._own is None:
                    loop = asyncio.new_event_loop()
                    made: concurrent.futures.Future[_Link] = concurrent.futures.Future()

                    def run_forever() -> None:
                        asyncio.set_event_loop(loop)
                        loop.call_soon(lambda: made.set_result(_Link(self)))
                        loop.run_forever()

                    threading.Thread(
                        target=run_forever, name="lbprovider-redis", daemon=True
                    ).start()
                    self._own, self._loop = made.result(), loop
                    atexit.register(self.close)
        return self._own

    async def _link(self) -> _Link:
        """The running loop's link."""
        if self._own is not None and asyncio.get_running_loop() is self._loop:
            return self._own
        return await self._links.get()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the store's loop and wait for it (the synchronous calls)."""
        return asyncio.run_coroutine_threadsafe(coro, self._own_link().loop).result()

    # -- writing ------------------------------------------------------------------------------

    async def commit(self, link: _Link, ops: list[_Op], marker: str | None = None) -> None:
        """Apply ``ops`` in one transaction (in memory while Redis is unreachable)."""
        try:
            with self._health.calling():
                async with asyncio.timeout(_TIMEOUT_S):
                    results = await link.transaction(ops, marker)
        except Unavailable:
            results = []
            for op in ops:
                op.sent = True
                try:
                    new = self._fallback.update_many(op.updates)
                except Exception as exc:
                    results.append((None, exc))
                    continue
                new.update(self._fallback.get_many([k for k in op.reads if k not in new]))
                results.append((new, None))
        except Exception as exc:  # a bug, not the server's health: tell the callers
            results = [(None, exc)] * len(ops)
        for op, (value, error) in zip(ops, results, strict=True):
            _settle(op.waiter, value, error)

    def rescue(self, ops: list[_Op], marker: str | None) -> None:
        """Posts a loop could not finish: the store's own loop writes them (any thread).
        With a ``marker``, their transaction may have applied: Redis is asked first."""
        ops = [op for op in ops if op.posted and not op.waiter.done()]
        if not ops:
            return
        own = self._own_link()
        if marker is not None and any(op.sent for op in ops):
            asyncio.run_coroutine_threadsafe(self._finish(ops, marker), own.loop)
            return
        with self._posts_lock:
            for seq, (op, _) in list(self._posts.items()):
                if op in ops:
                    self._posts[seq] = (op, own)
        for op in ops:
            op.sent = False
            own.batch.add(op)
        own.loop.call_soon_threadsafe(own.batch.kick)

    async def _finish(self, ops: list[_Op], marker: str) -> None:
        """Settle posts whose update went out as their loop ended: applied if the
        marker is there (asked twice, a moment apart, since that update may still be
        on its way), else written again."""
        own = self._own_link()
        for delay in (0.0, 0.05):
            await asyncio.sleep(delay)
            try:
                with self._health.calling():
                    async with asyncio.timeout(_TIMEOUT_S):
                        conn = await own._conn("check")
                        (found,) = await own._roundtrip(conn, [("EXISTS", _MARKER + marker)])
            except Unavailable:
                break
            if found:
                for op in ops:
                    _settle(op.waiter, {}, None)
                return
        for op in ops:
            op.sent = False
        self.rescue(ops, None)

    # -- reading ------------------------------------------------------------------------------

    async def fetch(self, link: _Link, keys: list[str]) -> dict[str, Any]:
        """One ``MGET`` through the guard (from memory while Redis is unreachable)."""
        try:
            with self._health.calling():
                async with asyncio.timeout(_TIMEOUT_S):
                    values = await link.mget(keys)
        except Unavailable:
            return self._fallback.get_many(keys)
        return {k: _load(v) for k, v in zip(keys, values, strict=True) if v is not None}

    def _posted_on(self, keys: set[str]) -> list[_Op]:
        with self._posts_lock:
            return [op for op, _ in self._posts.values() if not keys.isdisjoint(op.updates)]

    async def _get(self, keys: list[str]) -> dict[str, Any]:
        """The values of ``keys`` with this process's posts to them included: a post not
        yet sent is added here (its updaters are pure); one being sent is waited for."""
        wanted = set(keys)
        link = await self._link()
        for _ in range(_READ_TRIES):
            posted = self._posted_on(wanted)
            sending = [op for op in posted if op.sent]
            if sending:
                await _wait_all(sending)
                continue
            values = await link.read(keys)
            if any(op.sent for op in posted):
                continue  # sent meanwhile: Redis may or may not have it in what we read
            return _overlay(values, posted, wanted)
        # Posts keep reaching these keys as we read: let them land, then read.
        await _wait_all(self._posted_on(wanted))
        return await link.read(keys)

    async def _update(
        self, updates: Mapping[str, Updater], ttl_s: Mapping[str, float], read: list[str]
    ) -> dict[str, Any]:
        """One awaited update (and reads), in the next transaction of this loop, with
        the posts queued before it."""
        reads = tuple(k for k in read if k not in updates)
        link = await self._link()
        posted = self._posted_on(set(reads)) if reads else []
        if any(op.sent and op.via is not link for op in posted):
            reads = ()  # being written by another loop: read them on their own, after
        future: asyncio.Future[dict[str, Any]] = link.loop.create_future()
        mine = _Op(updates, ttl_s, future, reads)
        link.batch.add(mine)
        link.batch.kick()
        out = await future
        if not read:
            return out
        # This loop's posts sent in this transaction or an earlier one are in what it
        # read (a link runs one transaction at a time); those not sent yet are added.
        applied = [op for op in posted if op.via is link and 0 < op.tx <= mine.tx]
        if not reads or any(op.sent and op not in applied for op in posted):
            out.update(await self._get([k for k in read if k not in updates]))
            return out
        return _overlay(out, [op for op in posted if not op.sent], set(reads))

    async def _names(self, link: _Link, prefix: str) -> list[bytes]:
        return [
            n async for n in link.client.scan_iter(match=f"{PREFIX}{prefix}*", count=_SCAN_COUNT)
        ]

    async def _scan(self, prefix: str) -> dict[str, Any]:
        link = await self._link()
        try:
            with self._health.calling():
                async with asyncio.timeout(_TIMEOUT_S * 5):
                    names = await self._names(link, prefix)
                    values = await link.client.mget(names) if names else []
        except Unavailable:
            return self._fallback.scan(prefix)
        return {
            n.decode().removeprefix(PREFIX): _load(v)
            for n, v in zip(names, values, strict=True)
            if v is not None
        }

    async def _delete_prefix(self, prefix: str) -> None:
        link = await self._link()
        with contextlib.suppress(Unavailable), self._health.calling():
            async with asyncio.timeout(_TIMEOUT_S * 5):
                names = await self._names(link, prefix)
                if names:
                    await link.client.delete(*names)
        self._fallback.delete_prefix(prefix)

    # -- the StateStore interface ------------------------------------------------------------

    async def aget_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Current values of ``keys``, this process's posts to them included."""
        return await self._get(list(dict.fromkeys(keys)))

    async def aupdate_many(
        self,
        updates: Mapping[str, Updater],
        *,
        ttl_s: Mapping[str, float] | None = None,
        read: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Atomic read-modify-write of several keys: one optimistic transaction (shared
        with the updates issued meanwhile on this loop); ``read`` keys come with it."""
        return await self._update(dict(updates), dict(ttl_s or {}), list(dict.fromkeys(read)))

    def post_many(
        self, updates: Mapping[str, Updater], *, ttl_s: Mapping[str, float] | None = None
    ) -> None:
        """Apply soon, in one transaction with the posts of the next few milliseconds
        from this event loop (outside one: from the store's own).  Reads in this
        process include it at once."""
        link = self._links.peek() or self._own_link()
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        op = _Op(dict(updates), dict(ttl_s or {}), future)
        seq = next(self._seq)
        with self._posts_lock:
            self._posts[seq] = (op, link)
        future.add_done_callback(lambda done: self._posted(seq, done))
        if link.batch.add(op):
            if link is self._own:
                link.loop.call_soon_threadsafe(link.batch.arm)
            else:
                link.batch.arm()

    def _posted(self, seq: int, future: concurrent.futures.Future[Any]) -> None:
        with self._posts_lock:
            self._posts.pop(seq, None)
        if not future.cancelled() and future.exception() is not None:
            logger.error("a posted state update failed: %s", future.exception())

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Current values of ``keys``, this process's posts included."""
        return self._run(self._get(list(dict.fromkeys(keys))))

    def scan(self, prefix: str) -> dict[str, Any]:
        """Every key starting with ``prefix``."""
        self.flush()
        return self._run(self._scan(prefix))

    def update(self, key: str, fn: Updater) -> Any:
        """Atomic read-modify-write of one key."""
        return self.update_many({key: fn})[key]

    def update_many(
        self, updates: Mapping[str, Updater], *, ttl_s: Mapping[str, float] | None = None
    ) -> dict[str, Any]:
        """Atomic read-modify-write of several keys, after this process's posts."""
        self.flush()
        return self._run(self._update(dict(updates), dict(ttl_s or {}), []))

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key starting with ``prefix``."""
        self.flush()
        self._run(self._delete_prefix(prefix))

    def flush(self) -> None:
        """Write every posted update now, and wait for it.

        Posts of a loop that still runs are written by it; of a loop that ended
        without closing its link, by the store's own loop.  A synchronous call from
        inside a loop cannot wait for that loop's posts in flight (it blocks it): those
        are left out."""
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        with self._posts_lock:
            pending = list(self._posts.values())
        links = {id(link): link for _, link in pending}
        skipped: set[int] = set()
        for link in links.values():
            if link.loop is here or link.loop.is_closed():
                self.rescue(link.batch.take(), None)
                if link.loop.is_closed():
                    self.rescue(list(link.batch.inflight), link.batch.marker)
                else:
                    skipped.update(id(op) for op in link.batch.inflight)
            elif link.loop.is_running():
                link.loop.call_soon_threadsafe(link.batch.kick)
            else:  # stopped, not closed: it may run again, and nobody can wait for it
                skipped.update(id(op) for op, _ in pending)
        waiters = [op.waiter for op, _ in pending if id(op) not in skipped]
        concurrent.futures.wait(waiters, timeout=_CLOSE_S)  # type: ignore[arg-type]

    def close(self) -> None:
        """Flush, close the store loop's connections, stop that loop (idempotent).
        Callers' loops close their own connections when they end."""
        if self._own is None:
            return
        self.flush()
        link, self._own, self._loop = self._own, None, None
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(link.aclose(), link.loop).result(_CLOSE_S)
        link.loop.call_soon_threadsafe(link.loop.stop)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)


def _overlay(values: dict[str, Any], posted: list[_Op], keys: set[str]) -> dict[str, Any]:
    """``values`` with the not yet sent ``posted`` updates to ``keys`` applied, in order
    (updaters are pure: running one here changes nothing stored)."""
    for op in posted:
        try:
            new = {k: fn(values.get(k)) for k, fn in op.updates.items() if k in keys}
        except Exception:  # this post will fail as a whole: it changes nothing
            continue
        for k, v in new.items():
            if v is None:
                values.pop(k, None)
            else:
                values[k] = v
    return values


async def _wait_all(ops: list[_Op]) -> None:
    for op in ops:
        with contextlib.suppress(Exception):
            if isinstance(op.waiter, concurrent.futures.Future):
                await asyncio.wrap_future(op.waiter)
            else:
                await op.waiter
