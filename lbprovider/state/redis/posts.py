"""This process's posts not yet settled: what lets a process read its own writes.

A post (write-behind update) is applied in a transaction a few milliseconds later, maybe
by another loop's link, maybe by the store's own loop after a rescue.  Until it settles
it is kept here, in the order issued, with the link that holds it: a read adds the posts
not yet sent to what Redis returned (:func:`overlay`; updaters are pure, so running one
on a copy changes nothing stored) and waits for those being sent (:func:`wait_all`);
``flush`` waits for them all.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
from collections.abc import Iterable
from typing import Any

from lbprovider.state.redis.link import Link, Op

__all__ = ["Posts", "overlay", "wait_all"]

logger = logging.getLogger("lbprovider")


class Posts:
    """The posts not yet settled, in the order issued, each with the link holding it
    (any thread)."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[Op, Link]] = {}
        self._lock = threading.Lock()
        self._seq = itertools.count()

    def add(self, op: Op, link: Link, future: concurrent.futures.Future[Any]) -> None:
        """Keep ``op`` (held by ``link``) until ``future``, its waiter, is done."""
        seq = next(self._seq)
        with self._lock:
            self._items[seq] = (op, link)
        future.add_done_callback(lambda done: self._settled(seq, done))

    def _settled(self, seq: int, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._items.pop(seq, None)
        if not future.cancelled() and future.exception() is not None:
            logger.error("a posted state update failed: %s", future.exception())

    def on(self, keys: set[str]) -> list[Op]:
        """The posts that update any of ``keys``, in the order issued."""
        with self._lock:
            return [op for op, _ in self._items.values() if not keys.isdisjoint(op.updates)]

    def pending(self) -> list[tuple[Op, Link]]:
        """Every post not yet settled, with its link."""
        with self._lock:
            return list(self._items.values())

    def move(self, ops: Iterable[Op], link: Link) -> None:
        """``ops`` are now held by ``link`` (a rescue)."""
        moved = list(ops)
        with self._lock:
            for seq, (op, _) in list(self._items.items()):
                if op in moved:
                    self._items[seq] = (op, link)


def overlay(values: dict[str, Any], posted: list[Op], keys: set[str]) -> dict[str, Any]:
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


async def wait_all(ops: list[Op]) -> None:
    """Until every one of ``ops`` is settled (however it ends)."""
    for op in ops:
        with contextlib.suppress(Exception):
            if isinstance(op.waiter, concurrent.futures.Future):
                await asyncio.wrap_future(op.waiter)
            else:
                await op.waiter
