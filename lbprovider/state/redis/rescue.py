"""Posts left on an event loop that ends, finished on the store's own loop.

``asyncio.run`` cancels a loop's tasks when it ends, and with them a link's batch: its
awaited updates have nobody left to answer, but its posts are counts (metrics, TPM
tokens, served) that must not be lost.  They are handed to the store's own loop, in its
daemon thread, and written there.

The hard case is a post whose transaction went out just before the cancel: Redis may or
may not have applied it, and writing it again could count it twice.  So a transaction
carrying posts also sets a short-lived marker key (``lbprovider:tx:<id>``, see
:mod:`~lbprovider.state.redis.cas`); the own loop asks whether the marker exists —
twice, a moment apart, since that transaction may still be on its way — and writes the
posts again only if it does not.  A count is neither lost nor doubled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from lbprovider.state.health import StoreHealth, Unavailable
from lbprovider.state.redis.cas import MARKER
from lbprovider.state.redis.link import TIMEOUT_S, Link, Op, settle
from lbprovider.state.redis.posts import Posts

__all__ = ["Rescue"]

# When to ask whether the marker exists, after the loop ended (seconds).
_CHECKS_S = (0.0, 0.05)


class Rescue:
    """Finishes posts a loop could not, on the store's own link (``own_link()`` starts
    that loop's thread when needed)."""

    def __init__(self, own_link: Callable[[], Link], posts: Posts, health: StoreHealth) -> None:
        self._own_link = own_link
        self._posts = posts
        self._health = health

    def hand_over(self, ops: list[Op], marker: str | None) -> None:
        """Posts a loop could not finish: the store's own loop writes them (any thread).
        With a ``marker``, their transaction may have applied: Redis is asked first."""
        ops = [op for op in ops if op.posted and not op.waiter.done()]
        if not ops:
            return
        own = self._own_link()
        if marker is not None and any(op.sent for op in ops):
            asyncio.run_coroutine_threadsafe(self._finish(ops, marker), own.loop)
            return
        self._posts.move(ops, own)
        for op in ops:
            op.sent = False
            own.batch.add(op)
        own.loop.call_soon_threadsafe(own.batch.kick)

    async def _finish(self, ops: list[Op], marker: str) -> None:
        """Settle posts whose update went out as their loop ended: applied if the
        marker is there (asked twice, a moment apart, since that update may still be
        on its way), else written again."""
        own = self._own_link()
        for delay in _CHECKS_S:
            await asyncio.sleep(delay)
            try:
                with self._health.calling():
                    async with asyncio.timeout(TIMEOUT_S):
                        found = await own.exists(MARKER + marker)
            except Unavailable:
                break
            if found:
                for op in ops:
                    settle(op.waiter, {}, None)
                return
        for op in ops:
            op.sent = False
        self.hand_over(ops, None)
