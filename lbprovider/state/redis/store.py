"""``RedisStore``: the :class:`~lbprovider.state.StateStore` interface over Redis.

This module composes the others and adds what belongs to the store as a whole:

* which link serves a call — the running loop's (:class:`~lbprovider.loops.PerLoop` of
  :class:`~lbprovider.state.redis.link.Link`), or the store's own loop in a daemon thread
  for the synchronous calls (CLI, ``stats``), posts made outside any loop, and posts
  rescued from a loop that ended (:mod:`~lbprovider.state.redis.rescue`);
* the health guard around every trip (:mod:`lbprovider.state.health`): while Redis cannot
  be reached, calls are served from a :class:`~lbprovider.state.memory.MemoryStore` of
  its own, and a request never fails because of the store;
* reading one's own writes: a read adds this process's posts not yet sent
  (:mod:`~lbprovider.state.redis.posts`) and waits for those being sent; an awaited
  update's reads do the same for the posts of other loops;
* ``flush`` and ``close`` (also at exit), which wait for every post.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import itertools
import threading
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, TypeVar

import redis

from lbprovider.loops import PerLoop
from lbprovider.redaction import redact_url
from lbprovider.state import Updater
from lbprovider.state.health import StoreHealth, Unavailable
from lbprovider.state.memory import MemoryStore
from lbprovider.state.redis.cas import PREFIX, decode
from lbprovider.state.redis.link import CLOSE_S, TIMEOUT_S, Link, Op, settle
from lbprovider.state.redis.posts import Posts, overlay, wait_all
from lbprovider.state.redis.rescue import Rescue

__all__ = ["RedisStore"]

_SCAN_COUNT = 500
_READ_TRIES = 3
T = TypeVar("T")

_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)


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
        self._links: PerLoop[Link] = PerLoop(
            lambda: Link(self), lambda link: link.aclose(), alive=lambda link: True
        )
        # The store's own loop, in a daemon thread: the synchronous calls, posts made
        # outside any event loop, and posts rescued from a loop that ended.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own: Link | None = None
        self._start_lock = threading.Lock()
        # Posts not yet settled, in the order issued: reads add them, flush waits for
        # them; and the links holding some.
        self._posts = Posts()
        self._rescue = Rescue(self._own_link, self._posts, self._health)
        self.tx_numbers = itertools.count(1)  # transactions, in the order sent

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and state is kept in memory."""
        return self._health.degraded

    # -- loops and links ----------------------------------------------------------------------

    def _own_link(self) -> Link:
        if self._own is None:
            with self._start_lock:
                if self._own is None:
                    loop = asyncio.new_event_loop()
                    made: concurrent.futures.Future[Link] = concurrent.futures.Future()

                    def run_forever() -> None:
                        asyncio.set_event_loop(loop)
                        loop.call_soon(lambda: made.set_result(Link(self)))
                        loop.run_forever()

                    threading.Thread(
                        target=run_forever, name="lbprovider-redis", daemon=True
                    ).start()
                    self._own, self._loop = made.result(), loop
                    atexit.register(self.close)
        return self._own

    async def _link(self) -> Link:
        """The running loop's link."""
        if self._own is not None and asyncio.get_running_loop() is self._loop:
            return self._own
        return await self._links.get()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the store's loop and wait for it (the synchronous calls)."""
        return asyncio.run_coroutine_threadsafe(coro, self._own_link().loop).result()

    # -- writing ------------------------------------------------------------------------------

    async def commit(self, link: Link, ops: list[Op], marker: str | None = None) -> None:
        """Apply ``ops`` in one transaction (in memory while Redis is unreachable)."""
        try:
            with self._health.calling():
                async with asyncio.timeout(TIMEOUT_S):
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
            settle(op.waiter, value, error)

    def rescue(self, ops: list[Op], marker: str | None) -> None:
        """Posts a loop could not finish: the store's own loop writes them (any thread;
        :mod:`~lbprovider.state.redis.rescue`)."""
        self._rescue.hand_over(ops, marker)

    # -- reading ------------------------------------------------------------------------------

    async def fetch(self, link: Link, keys: list[str]) -> dict[str, Any]:
        """One ``MGET`` through the guard (from memory while Redis is unreachable)."""
        try:
            with self._health.calling():
                async with asyncio.timeout(TIMEOUT_S):
                    values = await link.mget(keys)
        except Unavailable:
            return self._fallback.get_many(keys)
        return {k: decode(v) for k, v in zip(keys, values, strict=True) if v is not None}

    async def _get(self, keys: list[str]) -> dict[str, Any]:
        """The values of ``keys`` with this process's posts to them included: a post not
        yet sent is added here (its updaters are pure); one being sent is waited for."""
        wanted = set(keys)
        link = await self._link()
        for _ in range(_READ_TRIES):
            posted = self._posts.on(wanted)
            sending = [op for op in posted if op.sent]
            if sending:
                await wait_all(sending)
                continue
            values = await link.read(keys)
            if any(op.sent for op in posted):
                continue  # sent meanwhile: Redis may or may not have it in what we read
            return overlay(values, posted, wanted)
        # Posts keep reaching these keys as we read: let them land, then read.
        await wait_all(self._posts.on(wanted))
        return await link.read(keys)

    async def _update(
        self, updates: Mapping[str, Updater], ttl_s: Mapping[str, float], read: list[str]
    ) -> dict[str, Any]:
        """One awaited update (and reads), in the next transaction of this loop, with
        the posts queued before it."""
        reads = tuple(k for k in read if k not in updates)
        link = await self._link()
        posted = self._posts.on(set(reads)) if reads else []
        if any(op.sent and op.via is not link for op in posted):
            reads = ()  # being written by another loop: read them on their own, after
        future: asyncio.Future[dict[str, Any]] = link.loop.create_future()
        mine = Op(updates, ttl_s, future, reads)
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
        return overlay(out, [op for op in posted if not op.sent], set(reads))

    async def _names(self, link: Link, prefix: str) -> list[bytes]:
        return [
            n async for n in link.client.scan_iter(match=f"{PREFIX}{prefix}*", count=_SCAN_COUNT)
        ]

    async def _scan(self, prefix: str) -> dict[str, Any]:
        link = await self._link()
        try:
            with self._health.calling():
                async with asyncio.timeout(TIMEOUT_S * 5):
                    names = await self._names(link, prefix)
                    values = await link.client.mget(names) if names else []
        except Unavailable:
            return self._fallback.scan(prefix)
        return {
            n.decode().removeprefix(PREFIX): decode(v)
            for n, v in zip(names, values, strict=True)
            if v is not None
        }

    async def _delete_prefix(self, prefix: str) -> None:
        link = await self._link()
        with contextlib.suppress(Unavailable), self._health.calling():
            async with asyncio.timeout(TIMEOUT_S * 5):
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
        op = Op(dict(updates), dict(ttl_s or {}), future)
        self._posts.add(op, link, future)
        if link.batch.add(op):
            if link is self._own:
                link.loop.call_soon_threadsafe(link.batch.arm)
            else:
                link.batch.arm()

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
        pending = self._posts.pending()
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
        concurrent.futures.wait(waiters, timeout=CLOSE_S)  # type: ignore[arg-type]

    def close(self) -> None:
        """Flush, close the store loop's connections, stop that loop (idempotent).
        Callers' loops close their own connections when they end."""
        if self._own is None:
            return
        self.flush()
        link, self._own, self._loop = self._own, None, None
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(link.aclose(), link.loop).result(CLOSE_S)
        link.loop.call_soon_threadsafe(link.loop.stop)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
