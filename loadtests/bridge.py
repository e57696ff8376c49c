"""Run asyncio code (aiokafka, the ChatAdsClient) from Locust's gevent greenlets.

Locust monkey-patches the process for gevent, so an asyncio loop cannot simply share the main
thread. The bridge runs one asyncio loop on a native OS thread (its selector is gevent's, driven
by that thread's own hub). Greenlets submit coroutines with `submit()` / `call()`; results come
back through a gevent `async_` watcher, the one primitive gevent documents as safe to signal from
another thread, so waiting greenlets yield cooperatively and Locust events are fired on the
gevent side (`post()` runs a callback there).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import gevent
import gevent.event
from gevent import monkey

T = TypeVar("T")
_start_native_thread = monkey.get_original("_thread", "start_new_thread")


class AsyncBridge:
    """One asyncio loop on a native thread, driven from gevent. Create it on the gevent side."""

    def __init__(self) -> None:
        self._inbox: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self._watcher = gevent.get_hub().loop.async_()
        self._watcher.start(self._drain)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = gevent.event.Event()
        ready = gevent.event.AsyncResult()
        _start_native_thread(self._run, (ready,))
        ready.get(timeout=10)

    def _run(self, ready: gevent.event.AsyncResult) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self.post(ready.set, True)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self.post(self._stopped.set)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    # -- asyncio side -> gevent side ---------------------------------------------------------

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the gevent hub soon (callable from any thread)."""
        self._inbox.append((fn, args))
        self._watcher.send()

    def _drain(self) -> None:
        while self._inbox:
            fn, args = self._inbox.popleft()
            try:
                fn(*args)
            except Exception as error:  # a failing callback must not stop the others
                gevent.get_hub().handle_error(fn, type(error), error, error.__traceback__)

    # -- gevent side -> asyncio side ---------------------------------------------------------

    def submit(self, coro: Coroutine[Any, Any, T]) -> gevent.event.AsyncResult:
        """Schedule `coro` on the loop; its result (or exception) lands in the AsyncResult."""
        result = gevent.event.AsyncResult()

        def settle(task: asyncio.Task[T]) -> None:
            if task.cancelled():
                self.post(result.set_exception, asyncio.CancelledError())
            elif task.exception() is not None:
                self.post(result.set_exception, task.exception())
            else:
                self.post(result.set, task.result())

        def start() -> None:
            self.loop.create_task(coro).add_done_callback(settle)

        self.loop.call_soon_threadsafe(start)
        return result

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and wait for it, yielding to other greenlets meanwhile."""
        value: T = self.submit(coro).get(timeout=timeout)
        return value

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._stopped.wait(timeout)
        self._watcher.stop()
