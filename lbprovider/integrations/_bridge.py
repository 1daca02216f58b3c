"""Running the async engine from synchronous hosts (``llm``'s sync models, litellm's
``completion``/``streaming``) and from hosts whose own loop must not wait for it (a
LiteLLM custom provider opening a stream inside ``completion()``).

One event loop per process runs in a daemon thread, for the life of the process:
litellm caches HTTP clients per loop, so a fresh loop per call would leave them
bound to a closed one.  :func:`iterate` streams an async generator's items to a
sync caller through a queue; closing the sync iterator early cancels the async
side, which closes the upstream stream.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["aiterate", "background_loop", "iterate", "reset_background_loop", "run"]

T = TypeVar("T")

_END = object()
_SHUTDOWN_S = 5.0


class _Loop:
    """The process's background loop (see :func:`background_loop`)."""

    loop: asyncio.AbstractEventLoop | None = None
    lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """The running background loop, started on first use (a resettable accessor)."""
    with _Loop.lock:
        if _Loop.loop is None or _Loop.loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run_forever() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=run_forever, name="lbprovider-loop", daemon=True).start()
            ready.wait()
            _Loop.loop = loop
            atexit.register(reset_background_loop)
        return _Loop.loop


def reset_background_loop() -> None:
    """Stop the background loop, closing what lives on it (connection pools) first, as
    ``asyncio.run`` does for its loop; at exit, so that no pool is left open."""
    with _Loop.lock:
        loop, _Loop.loop = _Loop.loop, None
    if loop is None or loop.is_closed():
        return
    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(_SHUTDOWN_S)
    loop.call_soon_threadsafe(loop.stop)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on the background loop and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coro, background_loop()).result()


def iterate(make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
    """Yield the items of the async iterator ``make()`` (run on the background loop)."""
    items: queue.Queue[Any] = queue.Queue()

    async def pump() -> None:
        try:
            async for item in make():
                items.put(item)
        except BaseException as exc:  # handed to the consumer, raised there
            items.put(_Raised(exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            items.put(_END)

    future = asyncio.run_coroutine_threadsafe(pump(), background_loop())
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        if not future.done():
            future.cancel()  # the consumer stopped early: close the upstream


async def _step(source: AsyncIterator[T]) -> T | object:
    try:
        return await anext(source)
    except StopAsyncIteration:  # cannot cross a Future: a sentinel instead
        return _END


async def _close(source: AsyncIterator[object]) -> None:
    close = getattr(source, "aclose", None)
    if close is not None:
        await close()


async def aiterate(make: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T]:
    """The items of ``make()`` — which runs on the background loop — for a consumer on
    another event loop (a host's), one step at a time; closing this closes the source."""
    loop = background_loop()
    source = make()
    finished = False
    try:
        while True:
            step = asyncio.run_coroutine_threadsafe(_step(source), loop)
            item = await asyncio.wrap_future(step)
            if item is _END:
                finished = True
                return
            yield item  # type: ignore[misc]
    finally:
        if not finished:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_close(source), loop))


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
